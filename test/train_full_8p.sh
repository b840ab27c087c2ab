#!/bin/bash
# ModelZoo accuracy run of SESEMI on the 8 devices of an Ascend 910 server: the 1p accuracy
# setting (CIFAR-10, ConvNet-13, 2000 labels, asl, 300 epochs) as one data-parallel job, one
# process per device of $RANK_TABLE_FILE; writes test/output/<device>/train_<device>.log and, in
# rank 0's folder, SESEMI_ID1270_for_TensorFlow_bs16_8p_acc.log.
# Usage: RANK_TABLE_FILE=/path/rank_table_8p.json bash test/train_full_8p.sh --data_path=/path/to/cifar-10-batches-py
CASE_KIND=acc
RANK_SIZE=8
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" || exit 1
sesemi_main "$@"
