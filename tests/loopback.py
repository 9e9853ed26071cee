"""A loopback HTTP server for download tests: serves one body with Range support, and can cut its next
answer short (a dropped connection, at byte `cut_next_at` of the file), answer a web page, or send slowly
(time to press Cancel). Its fields may be changed between requests; `log` holds the start byte of every
request."""
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    def __init__(self, body: bytes, content_type="application/octet-stream", cut_first_at=None, chunk_delay_s=0.0,
                 chunk=4096):
        self.body, self.content_type, self.cut_next_at = body, content_type, cut_first_at
        self.chunk_delay_s, self.chunk = chunk_delay_s, chunk
        self.log = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.answer(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/weights?dl=1"

    def answer(self, handler):
        body, ranged = self.body, handler.headers.get("Range")
        start = int(ranged.split("=")[1].split("-")[0]) if ranged else 0
        self.log.append(start)
        handler.send_response(206 if ranged else 200)
        handler.send_header("Content-Type", self.content_type)
        handler.send_header("Content-Length", str(len(body) - start))
        if ranged:
            handler.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        handler.end_headers()
        end, self.cut_next_at = (self.cut_next_at if self.cut_next_at is not None and self.cut_next_at > start
                                 else len(body)), None
        try:
            for at in range(start, end, self.chunk):
                handler.wfile.write(body[at:min(at + self.chunk, end)])
                handler.wfile.flush()
                time.sleep(self.chunk_delay_s)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client went away (a Cancel)
        if end < len(body):
            handler.connection.close()  # a dropped connection mid-file

    def shutdown(self):
        self.server.shutdown()
        self.server.server_close()
