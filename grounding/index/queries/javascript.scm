; JavaScript definitions.
;
; Capture convention: one pattern = one definition, captured as @definition.<kind>
; (class | function | method), with its name node captured as @name.
; Consumer dedupe rules (shared by all languages): when several captured
; definitions share the same @name node keep the outermost definition node; when
; the same node is captured with different kinds, prefer method over function.
;
; Functions assigned to a variable (`const f = () => ...`, `let g = function () {}`)
; are captured as the whole `lexical_declaration` / `variable_declaration`, named
; by the declarator's identifier. `export` wrappers are not part of the capture.

; Classes
(class_declaration
  name: (identifier) @name) @definition.class

; Methods (class bodies and object literals), constructors included
(method_definition
  name: [(property_identifier) (private_property_identifier)] @name) @definition.method

; Class fields holding a function: `handle = () => {}`
(field_definition
  property: [(property_identifier) (private_property_identifier)] @name
  value: [(arrow_function) (function_expression)]) @definition.method

; Functions
(function_declaration
  name: (identifier) @name) @definition.function

(generator_function_declaration
  name: (identifier) @name) @definition.function

(lexical_declaration
  (variable_declarator
    name: (identifier) @name
    value: [(arrow_function) (function_expression) (generator_function)])) @definition.function

(variable_declaration
  (variable_declarator
    name: (identifier) @name
    value: [(arrow_function) (function_expression) (generator_function)])) @definition.function

; Functions assigned to a property at the top of a module (CommonJS and prototype style:
; `res.send = function send(body) {}`, `exports.parse = (s) => ...`, `Router.prototype.handle = ...`),
; named by the whole left-hand side. The statement is captured so that its `;` stays with it. Only at
; the top: inside a function or a test's `describe(...)` such an assignment is part of what it does,
; and capturing it would cut the enclosing statement apart.
(program
  (expression_statement
    (assignment_expression
      left: [(member_expression) (subscript_expression)] @name
      right: [(arrow_function) (function_expression) (generator_function)])) @definition.function)

; Chained: `exports = module.exports = function createApplication() {}`, named by the inner target.
(program
  (expression_statement
    (assignment_expression
      right: (assignment_expression
        left: [(member_expression) (subscript_expression)] @name
        right: [(arrow_function) (function_expression) (generator_function)]))) @definition.function)

; A class assigned at the top (`exports.Route = class { ... }`): its methods keep their owner.
(program
  (expression_statement
    (assignment_expression
      left: [(member_expression) (subscript_expression)] @name
      right: (class))) @definition.class)
