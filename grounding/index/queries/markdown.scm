; Markdown sections.
;
; Capture convention: one pattern = one definition, captured as @definition.<kind>
; (here always `section`), with its name node captured as @name.
;
; The grammar nests `section` nodes by heading level: a `##` section contains its
; `###` subsections, and everything up to the next heading of the same or a
; higher level; so qualification by byte-range nesting yields
; `Title.Usage.Configuration`. A section is named by the `inline` text of its
; ATX heading; that text includes a closing sequence if the heading has one
; (`## Usage ##` -> `Usage ##`). Setext headings (`Title` underlined with === or
; ---) do NOT open a section in this grammar: they are plain children of the
; current section, so they are not captured. Text before the first heading sits
; in a heading-less `section`, also not captured. Code blocks are parsed as
; `fenced_code_block` (no injection), so a `#` line inside a fence is not a
; heading.

(section
  .
  (atx_heading
    heading_content: (inline) @name)) @definition.section
