"""Functions the quickstart notebook enqueues. Workers started in this folder import them."""
from __future__ import annotations

import email
import logging
import smtplib
import socketserver
import threading
import time
from email.message import EmailMessage

from nbqueue import progress

log = logging.getLogger("tasks")


def add(a, b):
    return a + b


def square(x):
    return x * x


def divide(a, b):
    return a / b


def blob(megabytes):
    """``megabytes`` MB of zero bytes: a result too big to draw whole."""
    return bytes(megabytes * 1_000_000)


def count_words(path):
    """Count the words of a text file (fails while the file is not there)."""
    with open(path, encoding="utf-8") as file:
        return len(file.read().split())


def crunch(steps=30, pause=0.1):
    """A longer job: reports its progress and prints as it goes."""
    total = 0
    for i in range(1, steps + 1):
        time.sleep(pause)  # stands for real work
        total += i * i
        progress(i, steps, f"step {i}")
        if i % 10 == 0:
            print(f"{i} steps done, total so far {total}")
    log.info("crunched %d steps", steps)
    return total


def send_mail(msg, host="127.0.0.1", port=25):
    """Send ``msg`` (a dict with to, subject, body) through the SMTP server at host:port."""
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "nbqueue@localhost", msg["to"], msg["subject"]
    mail.set_content(msg["body"])
    with smtplib.SMTP(host, port, timeout=10) as smtp:
        smtp.send_message(mail)
    print(f"sent {msg['subject']!r} to {msg['to']}")
    return f"sent to {msg['to']}"


class MailSink:
    """A tiny SMTP server on 127.0.0.1 that keeps the mails it receives: nothing leaves the machine."""

    def __init__(self, port=0):
        self.messages = []
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def start(self):
        threading.Thread(target=self.server.serve_forever, name="mail-sink", daemon=True).start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        messages = self.messages

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self.wfile.write(b"220 localhost mail sink\r\n")
                for line in iter(self.rfile.readline, b""):
                    verb = line[:4].upper()
                    if verb == b"QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    if verb == b"DATA":
                        self.wfile.write(b"354 end with <CR><LF>.<CR><LF>\r\n")
                        body = []
                        for raw in iter(self.rfile.readline, b""):
                            if raw.rstrip(b"\r\n") == b".":
                                break
                            body.append(raw[1:] if raw.startswith(b"..") else raw)
                        messages.append(email.message_from_bytes(b"".join(body)))
                    self.wfile.write(b"250 localhost\r\n" if verb in (b"EHLO", b"HELO") else b"250 OK\r\n")

        return Handler

    def __repr__(self):
        return f"<MailSink on 127.0.0.1:{self.port}, {len(self.messages)} mail(s)>"
