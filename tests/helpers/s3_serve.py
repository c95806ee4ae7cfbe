"""moto's S3 server, handling one request at a time: ``python s3_serve.py PORT``.

S3 applies a conditional write (``If-Match``, ``If-None-Match``) atomically: of two
``PutObject`` calls naming the same ETag, one succeeds and the other gets 412, which is
what ``heygem_ray/locks.py`` relies on. moto's server checks the condition and then
writes, on a thread per request, so two such calls that arrive together can both
succeed. Requests here are still read on their own threads (a client's idle keep-alive
connection blocks no one), but each is answered under one lock, as a store with
atomic requests would answer it.
"""

from __future__ import annotations

import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


class OneAtATime:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            # moto's responses are whole bodies: materialised here, inside the lock.
            return list(self.app(environ, start_response))


if __name__ == "__main__":
    run_simple("127.0.0.1", int(sys.argv[1]), OneAtATime(DomainDispatcherApplication(create_backend_app)),
               threaded=True, request_handler=MotoRequestHandler)  # fmt: skip
