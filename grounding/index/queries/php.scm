; PHP definitions.
;
; Capture convention: one pattern = one definition, captured as @definition.<kind>
; (class | function | method), with its name node captured as @name.
; Consumer dedupe rules (shared by all languages): when several captured
; definitions share the same @name node keep the outermost definition node; when
; the same node is captured with different kinds, prefer method over function.
;
; Classes, interfaces, traits, enums and braced namespaces (`namespace X { }`)
; count as `class`. Statement namespaces (`namespace App\Cache;`) have no body
; and are not captured. Methods (constructors included) are `method`;
; interface / abstract methods without a body are not captured.

; Types and namespaces
(class_declaration
  name: (name) @name) @definition.class

(interface_declaration
  name: (name) @name) @definition.class

(trait_declaration
  name: (name) @name) @definition.class

(enum_declaration
  name: (name) @name) @definition.class

(namespace_definition
  name: (namespace_name) @name
  body: (compound_statement)) @definition.class

; Methods
(method_declaration
  name: (name) @name
  body: (compound_statement)) @definition.method

; Functions
(function_definition
  name: (name) @name) @definition.function
