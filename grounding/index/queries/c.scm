; C definitions.
;
; Capture convention: one pattern = one definition, captured as @definition.<kind>
; (class | function | method), with its name node captured as @name.
; Consumer dedupe rules (shared by all languages): when several captured
; definitions share the same @name node keep the outermost definition node; when
; the same node is captured with different kinds, prefer method over function.
;
; Structs, unions and enums count as `class`, but only where they have a body
; (`struct ring *r` in a parameter list is a `struct_specifier` too). An
; anonymous struct/union/enum in a typedef is captured as the whole
; `type_definition`, named by the typedef name. Functions are named by the
; innermost identifier of their declarator; the declarator may be wrapped in
; pointer declarators (`struct ring *ring_new(...)`), handled up to two levels.
; Prototypes (declarations without a body) are not captured. Function-like
; macros (`#define MIN(a, b) ...`) are `function`.

; Types with a body
(struct_specifier
  name: (type_identifier) @name
  body: (field_declaration_list)) @definition.class

(union_specifier
  name: (type_identifier) @name
  body: (field_declaration_list)) @definition.class

(enum_specifier
  name: (type_identifier) @name
  body: (enumerator_list)) @definition.class

; typedef struct { ... } name;
(type_definition
  type: [
    (struct_specifier !name body: (field_declaration_list))
    (union_specifier !name body: (field_declaration_list))
    (enum_specifier !name body: (enumerator_list))
  ]
  declarator: (type_identifier) @name) @definition.class

; Functions
(function_definition
  declarator: (function_declarator
    declarator: (identifier) @name)) @definition.function

(function_definition
  declarator: (pointer_declarator
    declarator: (function_declarator
      declarator: (identifier) @name))) @definition.function

(function_definition
  declarator: (pointer_declarator
    declarator: (pointer_declarator
      declarator: (function_declarator
        declarator: (identifier) @name)))) @definition.function

; Function-like macros
(preproc_function_def
  name: (identifier) @name) @definition.function
