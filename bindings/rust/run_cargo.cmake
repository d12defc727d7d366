# CTest's rust_crate: installs kvpage from KVPAGE_BUILD_DIR into
# WORK_DIR/prefix, then runs the crate's tests (doc tests included) and its
# example against that prefix, offline (std only: no registry is reached).
file(REMOVE_RECURSE ${WORK_DIR}/prefix)
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc WORKING_DIRECTORY ${CRATE_DIR})
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endfunction()
run(${CMAKE_COMMAND} --install ${KVPAGE_BUILD_DIR} --prefix ${WORK_DIR}/prefix)
set(ENV{KVPAGE_PREFIX} ${WORK_DIR}/prefix)
set(ENV{CARGO_TARGET_DIR} ${WORK_DIR}/target)
run(${CARGO} test --offline --quiet)
run(${CARGO} run --offline --quiet --example decode)
run(${CARGO} run --offline --quiet --example readme)
