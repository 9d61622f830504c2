; Go definitions.
;
; Capture convention: one pattern = one definition, captured as @definition.<kind>
; (class | function | method), with its name node captured as @name.
; Consumer dedupe rules (shared by all languages): when several captured
; definitions share the same @name node keep the outermost definition node; when
; the same node is captured with different kinds, prefer method over function.
;
; Struct and interface types count as `class`; the capture is the `type_spec`
; (`Name struct {...}`), not the enclosing `type_declaration`, because one
; `type ( ... )` group can declare several types. Other named types
; (`type Kind int`) are not captured.
; Methods are top-level `method_declaration`s: they are not nested inside their
; struct, so byte-range qualification leaves them unqualified (`Next`, not
; `Scanner.Next`); the receiver type is in the `receiver` field.

; Types
(type_spec
  name: (type_identifier) @name
  type: [(struct_type) (interface_type)]) @definition.class

; Functions and methods
(function_declaration
  name: (identifier) @name) @definition.function

(method_declaration
  name: (field_identifier) @name) @definition.method
