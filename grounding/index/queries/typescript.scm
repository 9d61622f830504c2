; TypeScript definitions.
;
; Capture convention: one pattern = one definition, captured as @definition.<kind>
; (class | function | method), with its name node captured as @name.
; Consumer dedupe rules (shared by all languages): when several captured
; definitions share the same @name node keep the outermost definition node; when
; the same node is captured with different kinds, prefer method over function.
;
; Interfaces, enums and namespaces count as `class`. Type aliases, overload
; signatures and interface method signatures are not definitions here.
; Functions assigned to a variable are captured as the whole declaration
; statement, named by the declarator's identifier. `export` wrappers are not part
; of the capture. Note: a `namespace X {}` statement parses as an
; `expression_statement` wrapping `internal_module`; the capture is the
; `internal_module`.

; Classes, interfaces, enums, namespaces
(class_declaration
  name: (type_identifier) @name) @definition.class

(abstract_class_declaration
  name: (type_identifier) @name) @definition.class

(interface_declaration
  name: (type_identifier) @name) @definition.class

(enum_declaration
  name: (identifier) @name) @definition.class

(internal_module
  name: [(identifier) (nested_identifier)] @name) @definition.class

; Methods (class bodies and object literals), constructors included
(method_definition
  name: [(property_identifier) (private_property_identifier)] @name) @definition.method

; Class fields holding a function: `handle = () => {}`
(public_field_definition
  name: [(property_identifier) (private_property_identifier)] @name
  value: [(arrow_function) (function_expression)]) @definition.method

; Functions
(function_declaration
  name: (identifier) @name) @definition.function

(generator_function_declaration
  name: (identifier) @name) @definition.function

(lexical_declaration
  (variable_declarator
    name: (identifier) @name
    value: [(arrow_function) (function_expression) (generator_function)])) @definition.function

(variable_declaration
  (variable_declarator
    name: (identifier) @name
    value: [(arrow_function) (function_expression) (generator_function)])) @definition.function

; Functions and classes assigned at a module's top level: module_assignments.scm.
