#!/bin/bash
# In-process A/B of two versions of the register pass (stereographic_rows_f32*.h): A = the tree's headers, B = the
# copies in $1 (a folder holding edited stereographic_rows_f32.h / _reg.h; B's symbols renamed by -Dgeoops=geoopsB).
# reg_range as the extension calls it (four / two groups, prefetch), k = -1 one value, D = 2, 5, 6, 7, 8, ns per 16 rows,
# rounds interleaved A B A B (2^20 rows streaming, 4096 rows cached), medians of the per-round ratios and of the times,
# and the count of output elements that differ (bits).  Run from the repository root:
#   bash scripts/short_rows/ab2.sh /tmp/hdr && /tmp/ab2 21 expmap_2,logmap_2,expmap0_5
# BFLAGS (environment): extra compiler flags for B only (e.g. -DSOME_VARIANT=1 read by the header copies).
set -e
O=${AB2_OUT:-/tmp}  # where the objects and the binary go (AB2_OUT: another folder)
INC=$(python -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I'+p for p in include_paths()))")
F="-O3 -march=native -std=c++17 -fopenmp -w -Icsrc/include"
g++ $F -DSUF=A -Icsrc/cpu $INC -c scripts/short_rows/ab2_tu.cpp -o $O/ab2_a.o &
g++ $F $BFLAGS -DSUF=B -Dgeoops=geoopsB -I"$1" -Icsrc/cpu $INC -c scripts/short_rows/ab2_tu.cpp -o $O/ab2_b.o
wait
g++ $F -Iscripts/short_rows scripts/short_rows/ab2_main.cpp $O/ab2_a.o $O/ab2_b.o -o $O/ab2
