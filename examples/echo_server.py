#!/usr/bin/env python3
"""A small TCP echo server: the application under test in faultlab's examples.

Every connection gets its own thread; what arrives is sent back. When the
peer closes (recv returns 0) the server closes too, unless --leak is given:
then it forgets to close, and the connection stays in CLOSE-WAIT for as long
as the server runs -- the bug faultlab's health probe is there to catch.

    python3 echo_server.py --listen 127.0.0.1:7000 [--leak]
"""

import argparse
import socket
import sys
import threading

leaked = []  # with --leak: sockets the server never closes


def serve(conn, leak):
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
    except OSError:
        pass
    if leak:
        leaked.append(conn)
    else:
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:7000", help="HOST:PORT")
    parser.add_argument("--leak", action="store_true",
                        help="never close a connection after the peer closed it")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, int(port)))
    server.listen(128)
    print(f"listening on {host}:{server.getsockname()[1]}", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn, args.leak), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
