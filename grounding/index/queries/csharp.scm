; C# definitions.
;
; Capture convention: one pattern = one definition, captured as @definition.<kind>
; (class | function | method), with its name node captured as @name.
; Consumer dedupe rules (shared by all languages): when several captured
; definitions share the same @name node keep the outermost definition node; when
; the same node is captured with different kinds, prefer method over function.
;
; Classes, structs, interfaces, enums, records and block-bodied namespaces count
; as `class`; a namespace's @name may be a dotted `qualified_name`
; (`Example.Http`). File-scoped namespaces (`namespace X;`) are NOT captured:
; the grammar gives them no body (the following declarations are siblings), so
; the capture would be a single line. Methods, constructors, destructors and
; operators are `method` (operators are named by their `operator` keyword
; token); interface / abstract methods without a body are not captured.
; Properties are not captured. Local functions are `function`.

; Types and namespaces
(class_declaration
  name: (identifier) @name) @definition.class

(struct_declaration
  name: (identifier) @name) @definition.class

(interface_declaration
  name: (identifier) @name) @definition.class

(enum_declaration
  name: (identifier) @name) @definition.class

(record_declaration
  name: (identifier) @name) @definition.class

(namespace_declaration
  name: [(identifier) (qualified_name)] @name) @definition.class

; Methods
(method_declaration
  name: (identifier) @name
  body: (_)) @definition.method

(constructor_declaration
  name: (identifier) @name) @definition.method

(destructor_declaration
  name: (identifier) @name) @definition.method

(operator_declaration
  "operator" @name) @definition.method

; Local functions
(local_function_statement
  name: (identifier) @name) @definition.function
