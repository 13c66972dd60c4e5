#!/bin/sh
# Classifies the files a push changed (one path a line on stdin) for .github/workflows/deploy.yml
# and prints two GitHub step outputs:
#   code=true    something the image or the cluster's other objects are made of changed:
#                build the image, apply the whole overlay, roll the pods
#   policy=true  scripts/ changed: the policy ConfigMap must follow (live reload, no rollout)
# Everything else (docs, tests, benchmarks, ci.yml) deploys nothing; ci.yml tests it.
# Keep the code list equal to what the image is built from (.dockerignore: CMakeLists.txt,
# src/, web/) plus the manifests and this workflow. tests/k8s/deploy-workflow.test.mjs runs it.
code=false
policy=false
while IFS= read -r f; do
  case "$f" in
    "") ;;
    # the *.lua files and scripts/kustomization.yaml (which decides the ConfigMap's keys)
    scripts/*) policy=true ;;
    CMakeLists.txt|src/*|web/*|Dockerfile|.dockerignore) code=true ;;
    deploy/k8s/*|.github/workflows/deploy.yml|.github/deploy-changes.sh) code=true ;;
    *) ;;
  esac
done
echo "code=$code"
echo "policy=$policy"
