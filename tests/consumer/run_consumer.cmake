# Installs kvpage from KVPAGE_BUILD_DIR into WORK_DIR/prefix, then builds and
# runs the consumer project against that prefix alone. When the build has the
# tools (KVPAGE_BUILD_TOOLS), both land in bin/ and run from there.
file(REMOVE_RECURSE ${WORK_DIR})
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endfunction()
run(${CMAKE_COMMAND} --install ${KVPAGE_BUILD_DIR} --prefix ${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${WORK_DIR}/build
    -G ${CMAKE_GENERATOR} -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix
    -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/consumer)

file(STRINGS ${KVPAGE_BUILD_DIR}/CMakeCache.txt _tools
     REGEX "^KVPAGE_BUILD_TOOLS:BOOL=(ON|TRUE|1)$")
if(_tools)
  foreach(tool kvpage-dump kvpage-stress)
    if(NOT EXISTS ${WORK_DIR}/prefix/bin/${tool})
      message(FATAL_ERROR "${tool} was not installed in ${WORK_DIR}/prefix/bin")
    endif()
    execute_process(COMMAND ${WORK_DIR}/prefix/bin/${tool} --help
                    RESULT_VARIABLE rc OUTPUT_QUIET)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "installed ${tool} --help failed (${rc})")
    endif()
  endforeach()
endif()
