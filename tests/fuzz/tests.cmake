# Fuzz corpora as plain tests: every target in tests/fuzz is also built without libFuzzer, with
# the compiler in use and a small main (replay.c) that runs the target's entry point over each
# committed seed (corpus/<target>/) and crash regression (regress/<target>/). The libFuzzer
# builds themselves live in tests/fuzz/CMakeLists.txt (-DFUZZ=ON, clang; `make fuzz`).
set(CHATGW_FUZZ_DIR ${CMAKE_CURRENT_LIST_DIR})
foreach(t http ws proto policy pattern proxy)
  add_executable(fuzz_replay_${t} ${CHATGW_FUZZ_DIR}/${t}_fuzz.c ${CHATGW_FUZZ_DIR}/replay.c)
  target_compile_options(fuzz_replay_${t} PRIVATE ${WARN})
  target_link_libraries(fuzz_replay_${t} PRIVATE chatgw_core)
  set(dirs ${CHATGW_FUZZ_DIR}/corpus/${t})
  if(EXISTS ${CHATGW_FUZZ_DIR}/regress/${t})
    list(APPEND dirs ${CHATGW_FUZZ_DIR}/regress/${t})
  endif()
  add_test(NAME fuzz_replay_${t} COMMAND fuzz_replay_${t} ${dirs})
  set_tests_properties(fuzz_replay_${t} PROPERTIES TIMEOUT 300)
endforeach()
target_compile_definitions(fuzz_replay_policy PRIVATE
  FUZZ_DIR="${CHATGW_FUZZ_DIR}" FUZZ_SCRIPTS_DIR="${CMAKE_SOURCE_DIR}/scripts")
