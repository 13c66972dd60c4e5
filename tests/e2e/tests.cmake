# Helper programs of the e2e tests (found by the tests through CHATGW_BUILD).
add_executable(redis_slots_tool ${CMAKE_SOURCE_DIR}/tests/e2e/redis_slots_tool.c)
target_compile_options(redis_slots_tool PRIVATE ${WARN})
target_link_libraries(redis_slots_tool PRIVATE chatgw_core)
add_executable(redis_sub_tool ${CMAKE_SOURCE_DIR}/tests/e2e/redis_sub_tool.c)
target_compile_options(redis_sub_tool PRIVATE ${WARN})
target_link_libraries(redis_sub_tool PRIVATE chatgw_core)
