#!/bin/bash
# ModelZoo accuracy run of SESEMI: CIFAR-10, ConvNet-13, 2000 labels, asl mode, the
# default 300 epochs; writes test/output/$ASCEND_DEVICE_ID/SESEMI_ID1270_for_TensorFlow_bs16_1p_acc.log.
# Usage: bash test/train_full_1p.sh --data_path=/path/to/cifar-10-batches-py   (-h for all flags)
CASE_KIND=acc
RANK_SIZE=1
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" || exit 1
sesemi_main "$@"
