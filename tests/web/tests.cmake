# Browser tests of the web client (web/): playwright-core (tests/web/package.json, installed by
# `make npm`) driving Debian's chromium (tests/web/debs.txt), against the real binary. Each
# *.test.mjs runs in its own private, loopback-only network namespace (tests/web/netns.sh:
# `unshare -n`, `ip link set lo up`), so WebRTC gathers only 127.0.0.1 candidates. Screenshots
# go to ${CMAKE_BINARY_DIR}/web-artifacts.
if(NODE)
  file(GLOB WEB_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/web/*.test.mjs)
  foreach(t ${WEB_TESTS})
    get_filename_component(name ${t} NAME_WE)
    add_test(NAME web_${name}
      COMMAND sh ${CMAKE_SOURCE_DIR}/tests/web/netns.sh ${NODE} --test --test-reporter=spec ${t})
    set_tests_properties(web_${name} PROPERTIES
      ENVIRONMENT "CHATGW_BIN=$<TARGET_FILE:chatgw>;CHATGW_SRC=${CMAKE_SOURCE_DIR};CHATGW_BUILD=${CMAKE_BINARY_DIR}"
      TIMEOUT 300)
  endforeach()
endif()
