# Voice through Janus (janus_url): a real Janus (tests/voice/debs.txt) with its own config on a
# loopback port, the real binary and headless Chromium, inside a private network namespace
# with a veth pair (tests/voice/netns.sh), since Janus gathers no ICE candidates on loopback.
# The test skips with a message where the namespace or Janus cannot be had (not root).
if(NODE)
  file(GLOB VOICE_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/voice/*.test.mjs)
  foreach(t ${VOICE_TESTS})
    get_filename_component(name ${t} NAME_WE)
    add_test(NAME voice_${name}
      COMMAND sh ${CMAKE_SOURCE_DIR}/tests/voice/netns.sh ${NODE} --test --test-reporter=spec ${t})
    set_tests_properties(voice_${name} PROPERTIES
      ENVIRONMENT "CHATGW_BIN=$<TARGET_FILE:chatgw>;CHATGW_SRC=${CMAKE_SOURCE_DIR};CHATGW_BUILD=${CMAKE_BINARY_DIR}"
      TIMEOUT 420)
  endforeach()
endif()
