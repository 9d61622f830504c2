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

; Functions and classes assigned at a module's top level: module_assignments.scm.
