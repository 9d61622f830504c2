; Python definitions.
;
; Capture convention: one pattern = one definition, captured as @definition.<kind>
; (class | function | method | section), with its name node captured as @name.
;
; Patterns here overlap on purpose, and the consumer must dedupe:
;   1. Decorated definitions are captured twice: once as the `decorated_definition`
;      (which includes the decorators) and once as the inner `class_definition` /
;      `function_definition`. Both captures share the same @name node.
;      Rule: when several captured definitions share the same @name node, keep the
;      outermost definition node (the one with the widest byte range).
;   2. A function directly in a class body matches both a `method` pattern and the
;      generic `function` pattern, on the very same node. Rule: when the same
;      definition node is captured with different kinds, keep the most specific
;      kind: method over function.
; Nested functions (closures) are captured as functions; they get qualified by
; their enclosing definitions (e.g. `memoize.decorator.wrapper`).

; Classes
(class_definition
  name: (identifier) @name) @definition.class

(decorated_definition
  definition: (class_definition
    name: (identifier) @name)) @definition.class

; Methods: functions directly in a class body (decorated or not)
(class_definition
  body: (block
    (function_definition
      name: (identifier) @name) @definition.method))

(class_definition
  body: (block
    (decorated_definition
      definition: (function_definition
        name: (identifier) @name)) @definition.method))

; Functions (top level and nested)
(function_definition
  name: (identifier) @name) @definition.function

(decorated_definition
  definition: (function_definition
    name: (identifier) @name)) @definition.function
