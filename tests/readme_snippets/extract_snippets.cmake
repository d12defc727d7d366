# kvpage_extract_snippets(OUTPUT file.cc FILES a.md b.md ...): writes into
# OUTPUT a GoogleTest source that compiles and runs every ```cpp block of the
# Markdown FILES (paths relative to the project root), so that the documents
# stay the single source of their snippets. Runs at configure time; the
# Markdown files become configure dependencies, so editing one regenerates
# the test at the next build. OUTPUT is rewritten only when it changes.
#
# A block is wrapped by the HTML comment on the line just before its fence:
#   (none)                         the body of a function
#                                  absl::Status Run(SnippetContext& context),
#                                  which names kv, seq, layer and config
#                                  (snippet_context.h) and ends with
#                                  `return absl::OkStatus();`. The test runs
#                                  it and expects OK and a valid cache.
#   <!-- snippet: tu run=NAME -->  a whole translation unit; the test calls
#                                  its function `absl::Status NAME()` and
#                                  expects OK.
#   <!-- snippet: tu -->           a whole translation unit, compiled only.
# #include lines are hoisted to the top of the generated file (in place they
# become comments, so that #line keeps compiler messages on the Markdown's
# own line numbers).

function(_kvpage_snippet_test_name out file line)
  string(REGEX REPLACE "[^A-Za-z0-9]" "_" name "${file}")
  set(${out} "${name}_line${line}" PARENT_SCOPE)
endfunction()

function(kvpage_extract_snippets)
  cmake_parse_arguments(ARG "" "OUTPUT" "FILES" ${ARGN})
  set(includes "")
  set(snippets "")
  set(tests "")
  set(index 0)
  foreach(file IN LISTS ARG_FILES)
    set(path "${PROJECT_SOURCE_DIR}/${file}")
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${path}")
    file(READ "${path}" text)
    set(consumed 0)  # characters of `text` before `rest`
    set(rest "${text}")
    while(TRUE)
      string(FIND "${rest}" "\n```cpp\n" open)
      if(open EQUAL -1)
        break()
      endif()
      math(EXPR body_start "${open} + 8")
      string(SUBSTRING "${rest}" ${body_start} -1 after)
      string(FIND "${after}" "\n```\n" close)
      if(close EQUAL -1)
        message(FATAL_ERROR "${file}: a ```cpp block is never closed")
      endif()
      math(EXPR body_length "${close} + 1")
      string(SUBSTRING "${after}" 0 ${body_length} body)

      # The 1-based line of the block's first line of code.
      math(EXPR prefix_length "${consumed} + ${open} + 8")
      string(SUBSTRING "${text}" 0 ${prefix_length} prefix)
      string(REGEX MATCHALL "\n" newlines "${prefix}")
      list(LENGTH newlines line)
      math(EXPR line "${line} + 1")

      # The wrapping comment: the line just before the fence.
      string(SUBSTRING "${rest}" 0 ${open} before)
      string(FIND "${before}" "\n" last_newline REVERSE)
      math(EXPR last_newline "${last_newline} + 1")
      string(SUBSTRING "${before}" ${last_newline} -1 marker)
      set(kind body)
      set(run "")
      if(marker MATCHES "^<!-- snippet: ([a-z]+)( run=([A-Za-z0-9_]+))? -->$")
        set(kind "${CMAKE_MATCH_1}")
        set(run "${CMAKE_MATCH_3}")
        if(NOT kind STREQUAL "tu")
          message(FATAL_ERROR "${file}:${line}: unknown snippet kind '${kind}'")
        endif()
      elseif(marker MATCHES "<!-- snippet")
        message(FATAL_ERROR "${file}:${line}: cannot read '${marker}'")
      endif()

      # Hoist the #include lines.
      string(REGEX MATCHALL "(^|\n)#include [^\n]*" found "${body}")
      foreach(include IN LISTS found)
        string(STRIP "${include}" include)
        string(FIND "${includes}" "${include}\n" seen)
        if(seen EQUAL -1)
          string(APPEND includes "${include}\n")
        endif()
      endforeach()
      string(REGEX REPLACE "(^|\n)#include " "\\1// #include " body "${body}")

      math(EXPR index "${index} + 1")
      _kvpage_snippet_test_name(test_name "${file}" ${line})
      set(location "#line ${line} \"${file}\"\n")
      if(kind STREQUAL "tu")
        string(APPEND snippets "namespace snippet_${index} {\n${location}${body}}  // namespace snippet_${index}\n\n")
        if(run)
          string(APPEND tests "TEST(Snippets, ${test_name}) {\n  absl::Status status = snippet_${index}::${run}();\n  EXPECT_TRUE(status.ok()) << status;\n}\n\n")
        endif()
      else()
        # The final return sits in column 0, as the snippet's statements do
        # (indented, -Wmisleading-indentation would take it for the body of
        # a snippet's last unbraced if).
        string(APPEND snippets
          "namespace snippet_${index} {\n"
          "absl::Status Run(kvpage::testing::SnippetContext& context) {\n"
          "  [[maybe_unused]] kvpage::KVCache& kv = *context.cache;\n"
          "  [[maybe_unused]] const kvpage::SeqId seq = context.seq;\n"
          "  [[maybe_unused]] const int layer = context.layer;\n"
          "  [[maybe_unused]] kvpage::CacheConfig config = context.config;\n"
          "${location}${body}"
          "return absl::OkStatus();\n"
          "}\n"
          "}  // namespace snippet_${index}\n\n")
        string(APPEND tests
          "TEST(Snippets, ${test_name}) {\n"
          "  absl::StatusOr<kvpage::testing::SnippetContext> context =\n"
          "      kvpage::testing::MakeSnippetContext();\n"
          "  ASSERT_TRUE(context.ok()) << context.status();\n"
          "  absl::Status status = snippet_${index}::Run(*context);\n"
          "  EXPECT_TRUE(status.ok()) << status;\n"
          "  absl::Status valid = context->cache->Validate();\n"
          "  EXPECT_TRUE(valid.ok()) << valid;\n"
          "}\n\n")
      endif()

      math(EXPR advance "${body_start} + ${close} + 4")
      string(SUBSTRING "${rest}" ${advance} -1 rest)
      math(EXPR consumed "${consumed} + ${advance}")
    endwhile()
  endforeach()
  if(index EQUAL 0)
    message(FATAL_ERROR "no ```cpp block in ${ARG_FILES}")
  endif()

  string(CONCAT source
    "// Generated by tests/readme_snippets/extract_snippets.cmake from\n"
    "// ${ARG_FILES}: edit those, not this file.\n"
    "#include <gtest/gtest.h>\n\n"
    "#include \"snippet_context.h\"\n"
    "${includes}\n"
    "${snippets}"
    "${tests}")
  file(CONFIGURE OUTPUT "${ARG_OUTPUT}" CONTENT "@source@" @ONLY)
endfunction()
