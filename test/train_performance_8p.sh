#!/bin/bash
# ModelZoo performance run of SESEMI on the 8 devices of an Ascend 910 server: the 8p accuracy
# setting for 3 epochs only (speed from the epochs after the first, summed over the devices);
# writes, in rank 0's folder, test/output/<device>/SESEMI_ID1270_for_TensorFlow_bs16_8p_perf.log.
# Usage: RANK_TABLE_FILE=/path/rank_table_8p.json bash test/train_performance_8p.sh --data_path=/path/to/cifar-10-batches-py
CASE_KIND=perf
RANK_SIZE=8
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" || exit 1
sesemi_main "$@"
