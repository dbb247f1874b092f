"""String ids -> codes: Arrow's one hash table against `encode_strings`' partitions, side by side
on the same rows (what slifmr/data/encode.py's rule for partitioning rests on).

    python -m benchmarks.data.encode_ids /tmp/slifmr-import-scale/interactions-10000000.parquet --column user_id
    python -m benchmarks.data.encode_ids /tmp/slifmr-import-scale/interactions-100000000.parquet --column item_id --row-groups 30

(the inputs benchmarks.data.import_scale writes). Prints only: nothing goes to benchmarks/results. Per repeat: seconds of `pc.dictionary_encode` over the
chunked column and of `encode_strings` with partitioning forced, and whether they agree.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from slifmr.data import encode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a Parquet file with a string id column")
    ap.add_argument("--column", default="user_id")
    ap.add_argument("--row-groups", type=int, default=None, help="read only the first N row groups")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    f = pq.ParquetFile(args.source)
    groups = range(f.num_row_groups if args.row_groups is None else min(args.row_groups, f.num_row_groups))
    chunks = [f.read_row_group(g, columns=[args.column]).column(0).combine_chunks() for g in groups]
    rows = sum(len(c) for c in chunks)
    probe = pc.count_distinct(pa.chunked_array(chunks).slice(0, encode.PROBE_ROWS)).as_py()
    print(f"{args.column}: {rows:,} rows; {probe:,} distinct in the first {encode.PROBE_ROWS:,} rows "
          f"(partitioned by default above {encode.PARTITION_FROM:,})")
    encode.PARTITION_FROM = 0  # always partition here, to compare
    for _ in range(args.repeat):
        start = time.perf_counter()
        arrow = pc.dictionary_encode(pa.chunked_array(chunks))
        middle = time.perf_counter()
        distinct, codes = encode.encode_strings(list(chunks))
        end = time.perf_counter()
        same = distinct.equals(arrow.chunk(0).dictionary) and np.array_equal(codes, encode.indices_of(arrow))
        print(f"one table {middle - start:.2f} s ({(middle - start) / rows * 1e9:.0f} ns/row) | "
              f"partitioned {end - middle:.2f} s | {len(distinct):,} distinct | same result: {same}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
