; Ruby definitions.
;
; Capture convention: one pattern = one definition, captured as @definition.<kind>
; (class | function | method), with its name node captured as @name.
; Consumer dedupe rules (shared by all languages): when several captured
; definitions share the same @name node keep the outermost definition node; when
; the same node is captured with different kinds, prefer method over function.
;
; Classes and modules count as `class`; a name may be a scope resolution
; (`class Foo::Bar` -> `Foo::Bar`). Ruby uses the same `method` node for every
; `def`: one directly in a class / module / `class << self` body is `method`,
; anywhere else (top level, inside blocks) it is `function`. `def self.x` is a
; `singleton_method`, always `method`. `class << self` itself is not captured,
; so its methods are qualified by the enclosing class.

; Classes and modules
(class
  name: [(constant) (scope_resolution)] @name) @definition.class

(module
  name: [(constant) (scope_resolution)] @name) @definition.class

; Methods
(class
  body: (body_statement
    (method
      name: (_) @name) @definition.method))

(module
  body: (body_statement
    (method
      name: (_) @name) @definition.method))

(singleton_class
  body: (body_statement
    (method
      name: (_) @name) @definition.method))

(singleton_method
  name: (_) @name) @definition.method

; Functions
(method
  name: (_) @name) @definition.function
