; Rust definitions.
;
; Capture convention: one pattern = one definition, captured as @definition.<kind>
; (class | function | method), with its name node captured as @name.
; Consumer dedupe rules (shared by all languages): when several captured
; definitions share the same @name node keep the outermost definition node; when
; the same node is captured with different kinds, prefer method over function.
;
; Structs, enums, unions, traits, impl blocks and inline modules count as `class`.
; An impl block is named by its self type (`impl<T> Store<T> for Cache<T>` ->
; `Cache`), so a type with several impl blocks yields several `class`
; definitions with the same name. Functions in an impl or trait body are
; `method`; trait method signatures without a body (`function_signature_item`)
; are not captured. `macro_rules!` definitions are `function`.

; Types
(struct_item
  name: (type_identifier) @name) @definition.class

(enum_item
  name: (type_identifier) @name) @definition.class

(union_item
  name: (type_identifier) @name) @definition.class

(trait_item
  name: (type_identifier) @name) @definition.class

(mod_item
  name: (identifier) @name
  body: (declaration_list)) @definition.class

; impl blocks, named by their self type
(impl_item
  type: (type_identifier) @name) @definition.class

(impl_item
  type: (generic_type
    type: (type_identifier) @name)) @definition.class

(impl_item
  type: (scoped_type_identifier
    name: (type_identifier) @name)) @definition.class

(impl_item
  type: (generic_type
    type: (scoped_type_identifier
      name: (type_identifier) @name))) @definition.class

; Methods: functions in impl and trait bodies
(impl_item
  body: (declaration_list
    (function_item
      name: (identifier) @name) @definition.method))

(trait_item
  body: (declaration_list
    (function_item
      name: (identifier) @name) @definition.method))

; Functions and macros
(function_item
  name: (identifier) @name) @definition.function

(macro_definition
  name: (identifier) @name) @definition.function
