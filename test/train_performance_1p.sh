#!/bin/bash
# ModelZoo performance run of SESEMI: the accuracy run's setting for 3 epochs only (speed
# from the epochs after the first); writes test/output/$ASCEND_DEVICE_ID/SESEMI_ID1270_for_TensorFlow_bs16_1p_perf.log.
# Usage: bash test/train_performance_1p.sh --data_path=/path/to/cifar-10-batches-py   (-h for all flags)
CASE_KIND=perf
RANK_SIZE=1
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" || exit 1
sesemi_main "$@"
