; C++ definitions.
;
; Capture convention: one pattern = one definition, captured as @definition.<kind>
; (class | function | method), with its name node captured as @name.
; Consumer dedupe rules (shared by all languages): when several captured
; definitions share the same @name node keep the outermost definition node; when
; the same node is captured with different kinds, prefer method over function.
;
; Classes, structs, unions, enums (with a body) and named namespaces count as
; `class`. A `template <...>` wrapper is captured as the definition node (it
; shares the @name node with the inner class/function, so the dedupe keeps the
; template_declaration). Functions are named by the innermost identifier of
; their declarator (`Tokenizer::next` -> `next`; destructors keep the `~`).
; Functions defined inside a class body are `method` (constructors and
; destructors included); out-of-line member definitions (`Token
; Tokenizer::next() {...}`) are not nested in their class, so they are
; `function`, qualified only by enclosing namespaces. Declarations without a
; body are not captured. Function-like macros are `function`.

; Types and namespaces
(class_specifier
  name: (type_identifier) @name
  body: (field_declaration_list)) @definition.class

(struct_specifier
  name: (type_identifier) @name
  body: (field_declaration_list)) @definition.class

(union_specifier
  name: (type_identifier) @name
  body: (field_declaration_list)) @definition.class

(enum_specifier
  name: (type_identifier) @name
  body: (enumerator_list)) @definition.class

(type_definition
  type: [
    (struct_specifier !name body: (field_declaration_list))
    (union_specifier !name body: (field_declaration_list))
    (enum_specifier !name body: (enumerator_list))
  ]
  declarator: (type_identifier) @name) @definition.class

(namespace_definition
  name: [(namespace_identifier) (nested_namespace_specifier)] @name) @definition.class

(template_declaration
  [
    (class_specifier name: (type_identifier) @name body: (field_declaration_list))
    (struct_specifier name: (type_identifier) @name body: (field_declaration_list))
  ]) @definition.class

; Methods: function definitions inside a class body
(field_declaration_list
  (function_definition
    declarator: (function_declarator
      declarator: [(identifier) (field_identifier) (destructor_name) (operator_name)] @name)) @definition.method)

(field_declaration_list
  (function_definition
    declarator: (_
      (function_declarator
        declarator: [(identifier) (field_identifier) (destructor_name) (operator_name)] @name))) @definition.method)

(field_declaration_list
  (template_declaration
    (function_definition
      declarator: (function_declarator
        declarator: [(identifier) (field_identifier) (destructor_name) (operator_name)] @name))) @definition.method)

; Functions
(function_definition
  declarator: (function_declarator
    declarator: [(identifier) (field_identifier) (destructor_name) (operator_name)] @name)) @definition.function

(function_definition
  declarator: (function_declarator
    declarator: (qualified_identifier
      name: [(identifier) (destructor_name) (operator_name)] @name))) @definition.function

(function_definition
  declarator: (_
    (function_declarator
      declarator: [(identifier) (field_identifier) (destructor_name) (operator_name)] @name))) @definition.function

(function_definition
  declarator: (_
    (function_declarator
      declarator: (qualified_identifier
        name: [(identifier) (destructor_name) (operator_name)] @name)))) @definition.function

(template_declaration
  (function_definition
    declarator: (function_declarator
      declarator: [(identifier) (field_identifier) (destructor_name) (operator_name)] @name))) @definition.function

(template_declaration
  (function_definition
    declarator: (function_declarator
      declarator: (qualified_identifier
        name: [(identifier) (destructor_name) (operator_name)] @name)))) @definition.function

(template_declaration
  (function_definition
    declarator: (_
      (function_declarator
        declarator: [(identifier) (field_identifier) (destructor_name) (operator_name)] @name)))) @definition.function

; Function-like macros
(preproc_function_def
  name: (identifier) @name) @definition.function
