; Swift definitions.
;
; Capture convention: one pattern = one definition, captured as @definition.<kind>
; (class | function | method), with its name node captured as @name.
; Consumer dedupe rules (shared by all languages): when several captured
; definitions share the same @name node keep the outermost definition node; when
; the same node is captured with different kinds, prefer method over function.
;
; `class`, `struct`, `enum`, `actor` and `extension` are all `class_declaration`
; (the keyword is an anonymous child); with `protocol_declaration` they count as
; `class`. An extension is named by its extended type (`extension APIClient` ->
; `APIClient`, the whole `user_type` text, so `extension Foo.Bar` -> `Foo.Bar`),
; so a type and its extensions are several definitions with the same name.
; Functions in a class / struct / enum / extension body are `method`;
; initializers and deinitializers are `method` named by their `init` / `deinit`
; keyword. Protocol requirements (`protocol_function_declaration`), computed
; properties and subscripts are not captured.
; Beware: `function_declaration` has several children in the `name` field: the
; function name (simple_identifier) AND the return type (user_type, ...), hence
; the explicit `(simple_identifier)` below.

; Types
(class_declaration
  name: (type_identifier) @name) @definition.class

(class_declaration
  name: (user_type) @name) @definition.class

(protocol_declaration
  name: (type_identifier) @name) @definition.class

; Methods
(class_body
  (function_declaration
    name: (simple_identifier) @name) @definition.method)

(enum_class_body
  (function_declaration
    name: (simple_identifier) @name) @definition.method)

(init_declaration
  "init" @name) @definition.method

(deinit_declaration
  "deinit" @name) @definition.method

; Functions
(function_declaration
  name: (simple_identifier) @name) @definition.function
