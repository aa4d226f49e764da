"""The local Dask cluster the study's and the tuning's engine starts (engine.open_cluster), for real: seconds."""

import contextlib
import socket
import warnings

from fashion_compare import engine


def test_the_local_cluster_leaves_dasks_dashboard_port_alone():
    """A study's or a tuning's LocalCluster shows no dashboard and keeps its scheduler's HTTP server off 8787 (a
    user's own Dask cluster's port, where it used to warn "Port 8787 is already in use"), on this host only."""
    with socket.socket() as holder, warnings.catch_warnings():
        warnings.simplefilter("error")  # Dask's port warning would fail the test
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            holder.bind(("127.0.0.1", 8787))  # a dashboard of somebody else's, where the port is free
            holder.listen()
        with engine.open_cluster(None, 1) as client:
            server = client.cluster.scheduler.http_server  # its bound address, as Dask records it
            bound = (server.address, server.port)
            assert client.dashboard_link is None or "8787" not in client.dashboard_link
    assert bound[0] == "127.0.0.1" and bound[1] != 8787, bound
