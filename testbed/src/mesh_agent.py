# drop-mesh agent (see MESH_AGENT_PY in lib.rs): serves this device's file,
# pulls every peer's and checks each by sha256.
import hashlib, random, socket, sys, threading, time
me, n, port, size, prefix, limit = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
deadline = time.monotonic() + limit
def data(i):
    return random.Random(i).randbytes(size)
mine = data(me)
served = 0
lock = threading.Lock()
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", port))
l.listen(64)
def send(c):
    global served
    try:
        c.sendall(mine)
        c.shutdown(socket.SHUT_WR)
        while c.recv(4096):
            pass
        with lock:
            served += 1
    finally:
        c.close()
def serve():
    while True:
        c, _ = l.accept()
        threading.Thread(target=send, args=(c,), daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
ok = True
for k in range(1, n):
    j = (me - 1 + k) % n + 1
    want = hashlib.sha256(data(j)).hexdigest()
    while True:
        try:
            s = socket.create_connection((prefix + str(j), port), timeout=max(1, deadline - time.monotonic()))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    t0 = time.monotonic()
    h = hashlib.sha256()
    got = 0
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        h.update(b)
        got += len(b)
    s.close()
    good = h.hexdigest() == want and got == size
    ok = ok and good
    print("pull %d %s %d %.4f" % (j, "ok" if good else "BAD", got, time.monotonic() - t0), flush=True)
while served < n - 1 and time.monotonic() < deadline:
    time.sleep(0.02)
print("served %d" % served, flush=True)
sys.exit(0 if ok and served == n - 1 else 1)
