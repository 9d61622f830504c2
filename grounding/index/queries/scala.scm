; Scala definitions (Scala 2 and 3 syntax).
;
; Capture convention: one pattern = one definition, captured as @definition.<kind>
; (class | function | method), with its name node captured as @name.
; Consumer dedupe rules (shared by all languages): when several captured
; definitions share the same @name node keep the outermost definition node; when
; the same node is captured with different kinds, prefer method over function.
;
; Classes (case classes included), objects, traits and Scala 3 enums count as
; `class`; a class and its companion object are two definitions with the same
; name. A `def` with a body (`function_definition`) directly in a template / enum
; body is `method`, elsewhere (top level, nested in another def) `function`.
; Abstract `def`s (`function_declaration`) are not captured. Defs in an anonymous
; class (`new Clock { def now() = ... }`) are `method`, qualified by the
; enclosing captured definition.
; Beware: definitions using indentation syntax (no braces) end where the next
; token starts, i.e. at column 0 (or the indentation) of the following
; definition's line, after any blank lines.

; Types
(class_definition
  name: (identifier) @name) @definition.class

(object_definition
  name: (identifier) @name) @definition.class

(trait_definition
  name: (identifier) @name) @definition.class

(enum_definition
  name: (identifier) @name) @definition.class

; Methods
(template_body
  (function_definition
    name: (identifier) @name) @definition.method)

(enum_body
  (function_definition
    name: (identifier) @name) @definition.method)

; Functions
(function_definition
  name: (identifier) @name) @definition.function
