"""Serve a current ClickHouse from PyPI's chdb-core (deploy/services.sh).

chdb-core carries the ClickHouse engine as clickhouse-local. Run in a
directory whose config.xml names listen_host, tcp_port and http_port,
`SYSTEM START LISTEN TCP/HTTP` opens the native and HTTP ports; they stay
open as long as the query that opened them runs, so the same query then
sleeps (one row a second, for decades) until the process is killed.

The output format given with the query becomes the default format of the
served sessions: with Null, native SELECTs would return no rows, so it is
TabSeparated and the sleeping SELECT discards its rows itself (FORMAT Null).

usage: python serve.py DATA_DIR   (working directory: the one with config.xml)
"""

import sys

import chdb  # noqa: F401  (initializes the engine)
from chdb import _chdb

QUERY = """
SYSTEM START LISTEN TCP;
SYSTEM START LISTEN HTTP;
SELECT sleepEachRow(1) FROM numbers(1000000000)
SETTINGS max_block_size = 1, max_execution_time = 0
FORMAT Null
"""


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    try:
        _chdb.query(QUERY, "TabSeparated", path=sys.argv[1])
    except Exception as e:  # a bad config, a port in use
        sys.exit("clickhouse-local: %s" % e)
    sys.exit("clickhouse-local stopped serving")


if __name__ == "__main__":
    main()
