; Module-level assignments, shared by JavaScript, TypeScript and TSX (languages.py appends this file to
; their queries: the node names are the same in the three grammars).
;
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
