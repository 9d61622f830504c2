; Kotlin definitions.
;
; Capture convention: one pattern = one definition, captured as @definition.<kind>
; (class | function | method), with its name node captured as @name.
; Consumer dedupe rules (shared by all languages): when several captured
; definitions share the same @name node keep the outermost definition node; when
; the same node is captured with different kinds, prefer method over function.
;
; This grammar has almost no field names: names are matched as child node types.
; `class`, `interface`, `enum class` and `data class` are all `class_declaration`;
; `object` is `object_declaration`; all count as `class`. Named companion objects
; are `class`; an unnamed `companion object` is not captured, so its functions
; are qualified by the enclosing class. Functions in a class / object / enum
; body are `method`; secondary constructors are `method` named by their
; `constructor` keyword. Functions without a body (interface / abstract) are not
; captured. Extension functions are named by the plain name
; (`fun String.isIdentifier()` -> `isIdentifier`).

; Types
(class_declaration
  (type_identifier) @name) @definition.class

(object_declaration
  (type_identifier) @name) @definition.class

(companion_object
  (type_identifier) @name) @definition.class

; Methods
(class_body
  (function_declaration
    (simple_identifier) @name
    (function_body)) @definition.method)

(enum_class_body
  (function_declaration
    (simple_identifier) @name
    (function_body)) @definition.method)

(secondary_constructor
  "constructor" @name) @definition.method

; Functions
(function_declaration
  (simple_identifier) @name
  (function_body)) @definition.function
