# CTest's readme_bindings: the README's C, Rust and Python examples are the
# files that the C test target, the crate's `readme` example and pytest run.
# Each sits in the README after a line `<!-- example: PATH -->`; this
# script fails when a block and its file differ.
file(READ ${SOURCE_DIR}/README.md readme)
foreach(path bindings/c/readme_example.c bindings/rust/examples/readme.rs
             bindings/python/readme_example.py)
  string(FIND "${readme}" "<!-- example: ${path} -->" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "README.md has no <!-- example: ${path} --> block")
  endif()
  string(SUBSTRING "${readme}" ${at} -1 rest)
  string(FIND "${rest}" "```" open)
  string(SUBSTRING "${rest}" ${open} -1 rest)
  string(FIND "${rest}" "\n" eol)
  math(EXPR body "${eol} + 1")
  string(SUBSTRING "${rest}" ${body} -1 rest)
  string(FIND "${rest}" "```" close)
  string(SUBSTRING "${rest}" 0 ${close} block)
  file(READ ${SOURCE_DIR}/${path} text)
  if(NOT block STREQUAL text)
    message(FATAL_ERROR "README.md's example of ${path} differs from the file")
  endif()
endforeach()
