# Kubernetes suite (issue 9): manifests, Pod Security, the ingress-nginx values, monitoring and
# its operator components, the deploy workflow, Gateway API, the
# kubelet simulation and the container image, each a Node test file run against the real chatgw binary. Needs `npm ci` in tests/k8s
# (make test does it), kubectl on PATH, and tests/k8s/debs.txt (podman, runc, debootstrap,
# prometheus). The image test builds with podman as root; it is the slow one (about 2 minutes
# the first time, seconds once the debootstrapped base and the build layers are cached).
if(NODE)
  foreach(t manifests podsecurity ingress-nginx monitoring operator deploy-workflow gateway-api kubelet rollout image docs)
    add_test(NAME k8s_${t}
      COMMAND ${NODE} --test --test-reporter=spec ${CMAKE_SOURCE_DIR}/tests/k8s/${t}.test.mjs
      WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/tests/k8s)
    set_tests_properties(k8s_${t} PROPERTIES
      ENVIRONMENT "CHATGW_BIN=$<TARGET_FILE:chatgw>;CHATGW_SRC=${CMAKE_SOURCE_DIR};CHATGW_BUILD=${CMAKE_BINARY_DIR}"
      LABELS k8s
      TIMEOUT 600)
  endforeach()
  set_tests_properties(k8s_image PROPERTIES TIMEOUT 1500)
endif()
