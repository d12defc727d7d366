# Installs kvpage from KVPAGE_BUILD_DIR into WORK_DIR/prefix, then builds and
# runs the consumer project against that prefix alone. When the build has the
# tools (KVPAGE_BUILD_TOOLS), they land in bin/ and run from there.
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
file(STRINGS ${KVPAGE_BUILD_DIR}/CMakeCache.txt _remote
     REGEX "^KVPAGE_BUILD_REMOTE:BOOL=(ON|TRUE|1)$")
if(_remote)
  if(NOT EXISTS ${WORK_DIR}/build/consumer_remote)
    message(FATAL_ERROR "kvpage::kvpage_remote was not in the installed package")
  endif()
  run(${WORK_DIR}/build/consumer_remote)
endif()

# A C engine finds the C API's shared library through pkg-config alone.
set(ENV{PKG_CONFIG_PATH} "")
file(GLOB_RECURSE _pc ${WORK_DIR}/prefix/*/kvpage.pc)
if(NOT _pc)
  message(FATAL_ERROR "kvpage.pc was not installed under ${WORK_DIR}/prefix")
endif()
get_filename_component(_pc_dir ${_pc} DIRECTORY)
set(ENV{PKG_CONFIG_PATH} ${_pc_dir})
execute_process(COMMAND pkg-config --cflags --libs kvpage
                OUTPUT_VARIABLE _flags OUTPUT_STRIP_TRAILING_WHITESPACE
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg-config --cflags --libs kvpage failed (${rc})")
endif()
separate_arguments(_flags UNIX_COMMAND "${_flags}")
run(cc -std=c99 -Wall -Werror ${CONSUMER_SOURCE_DIR}/consumer.c ${_flags}
    -o ${WORK_DIR}/consumer_c)
execute_process(COMMAND pkg-config --variable=libdir kvpage
                OUTPUT_VARIABLE _libdir OUTPUT_STRIP_TRAILING_WHITESPACE)
set(ENV{LD_LIBRARY_PATH} ${_libdir})
run(${WORK_DIR}/consumer_c)

file(STRINGS ${KVPAGE_BUILD_DIR}/CMakeCache.txt _tools
     REGEX "^KVPAGE_BUILD_TOOLS:BOOL=(ON|TRUE|1)$")
if(_tools)
  set(_installed kvpage-dump kvpage-stress kvpage-generate kvpage-replay)
  if(_remote)
    list(APPEND _installed kvpage-share)
  endif()
  foreach(tool ${_installed})
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

# With the bindings built, the Python module imports from the prefix alone
# (its run path finds libkvpage.so in <prefix>/lib).
file(GLOB _module ${WORK_DIR}/prefix/lib/python3/dist-packages/kvpage*.so)
if(_module)
  set(ENV{PYTHONPATH} ${WORK_DIR}/prefix/lib/python3/dist-packages)
  unset(ENV{LD_LIBRARY_PATH})
  run(/usr/bin/python3 -c "import kvpage; kvpage.Cache(num_layers=1, num_kv_heads=1, head_dim=8, num_blocks=4, max_seq_len=16)")
endif()
