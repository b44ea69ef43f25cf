/* portico.proxy._relay: the TCP relay's byte copy in C, nested in the event loop.

Why: a relayed read through uvloop costs ~3k instructions of libuv -> uvloop -> Python
callback -> transport.write, of which the copy itself is a few hundred
(bench/relaypath.py --mode l4 --callgrind). Here one epoll instance of our own holds every
relayed socket of a worker; the event loop watches only that epoll descriptor
(loop.add_reader), and each time it is readable `Engine.run` copies, in C, what every ready
socket has: recv() into one static 64 KiB buffer, send() to the other socket. One Python call
per loop iteration instead of one per read.

Single-threaded: every entry point runs on the loop's thread with the GIL held and never calls
back into Python, so nothing here is locked, and the one copy buffer can be static.

Per pair of sockets (client, server) and per way (up: client -> server, down: server -> client):
- flow control: a send that takes less than was read keeps the rest in a heap buffer (the only
  allocation besides the Pair itself; freed once sent), stops reading the source and waits for
  EPOLLOUT on the destination, like uvloop's pause_reading / resume_writing;
- half-close: an EOF read on one side becomes shutdown(SHUT_WR) of the other once what is
  pending for it is sent; the other way keeps flowing; when both ways have ended, both sockets
  are closed gracefully;
- an error on either side (reset, broken pipe) resets the other (SO_LINGER 0, then close), as
  portico.proxy.l4.Relay.side_lost does: graceful only when both ways ended cleanly.

Completion: a pair ends exactly once, and its owner (any Python object, the Relay) is reported
exactly once: in the list `run()` or `sweep()` returns if it ended there, or by the return value
of the call that ended it (`add` -> `Pair.done`, `Pair.abort()`, `Pair.close()`).

Idle timeout and counters: `sweep()`, called by Python every few seconds, visits every live
pair: one that read nothing since the last sweep for `idle_timeout` seconds is closed (reset if
something is still pending: a peer that stopped reading would hold a graceful close forever),
and the owners of pairs that moved bytes are returned so that Python folds `Pair.take()` into
its byte counters. No clock is read per chunk.

Bounded work per call: run() handles at most MAX_EVENTS ready sockets and MAX_READS reads per
socket; epoll is level-triggered, so whatever is left keeps the descriptor readable and the loop
calls again after its other callbacks. All sockets are non-blocking; EINTR is retried, EAGAIN
ends the step.
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)  /* one recv(); also the most a way ever holds pending */
#define MAX_EVENTS 64      /* ready sockets handled per run() */
#define MAX_READS 4        /* recv()s per ready socket per run(), while each fills CHUNK */
#define MAX_RETRIES 8      /* EINTR retries of one call (non-blocking calls hardly see it) */

/* The copy buffer: what one recv() read, until send() took it (or it went to `pending`).
   Static: only one call runs at a time (GIL held, no callback into Python meanwhile). */
static char chunk[CHUNK];

typedef struct Pair Pair;
typedef struct Engine Engine;

/* One way of a pair: bytes read from socket `i` go to socket `1 - i` (way 0 = up). */
typedef struct {
    char *pending;       /* read but not yet sent (malloc'd only after a short send) */
    size_t pending_off;  /* sent so far of `pending` */
    size_t pending_len;  /* 0: nothing pending */
    uint64_t bytes;      /* read from the source (`to_server` not included) */
    uint64_t taken;      /* `bytes` as of the last Pair.take() */
    uint8_t eof;         /* the source is done: EOF read (or the client's given to add) */
    uint8_t shut;        /* the destination's write side is shut: this way has ended */
} Way;

/* One socket of a pair; epoll's data.ptr points here. */
typedef struct {
    Pair *pair;
    int fd;           /* -1 once closed */
    uint32_t events;  /* what epoll watches on it now; 0: not in the epoll set */
} Sock;

struct Pair {
    PyObject_HEAD
    Engine *engine;     /* strong reference while live (a live pair needs the epoll set) */
    PyObject *owner;    /* reported once at the end, then dropped */
    Sock sock[2];       /* 0: client, 1: server */
    Way way[2];         /* 0: up (client -> server), 1: down (server -> client) */
    Pair *prev, *next;  /* in the engine's live list, then its ended list */
    double idle_timeout;  /* <= 0: none */
    double quiet_since;   /* the sweep that last saw bytes move (or add) */
    uint64_t swept;       /* up + down bytes at that sweep */
    uint8_t done;         /* both sockets closed */
    uint8_t clean;        /* ... gracefully: both ways had ended */
    uint8_t listed;       /* 1: in the live list; 2: in the ended list; 0: neither */
};

struct Engine {
    PyObject_HEAD
    int epfd;        /* -1 once closed */
    Pair *live;      /* pairs with open sockets (doubly linked) */
    Pair *ended;     /* ended pairs not yet reported (owners still held) */
    Py_ssize_t count;  /* live pairs */
};

static PyTypeObject PairType;
static PyTypeObject EngineType;

static double monotonic(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* -- lists ----------------------------------------------------------------------------------- */

static void unlink_pair(Pair *p) {
    Engine *e = p->engine;
    Pair **head = p->listed == 1 ? &e->live : &e->ended;
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        *head = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
    if (p->listed == 1)
        e->count--;
    p->listed = 0;
}

static void push_pair(Pair *p, int list) {
    Engine *e = p->engine;
    Pair **head = list == 1 ? &e->live : &e->ended;
    p->prev = NULL;
    p->next = *head;
    if (*head != NULL)
        (*head)->prev = p;
    *head = p;
    p->listed = (uint8_t)list;
    if (list == 1)
        e->count++;
}

/* -- ending ---------------------------------------------------------------------------------- */

static void free_pending(Way *w) {
    free(w->pending);
    w->pending = NULL;
    w->pending_off = w->pending_len = 0;
}

/* Close both sockets, gracefully or with a reset (SO_LINGER 0: RST, nothing lingers), and move
   the pair to the ended list, where the engine's reference to it now stands for its report. */
static void end_pair(Pair *p, int graceful) {
    if (p->done)
        return;
    p->done = 1;
    p->clean = (uint8_t)(graceful != 0);
    for (int i = 0; i < 2; i++) {
        Sock *s = &p->sock[i];
        if (s->fd < 0)
            continue;
        /* closing the descriptor drops it from the epoll set only if no other descriptor
           shares the socket (a fork, a dup): say so explicitly */
        if (s->events != 0 && p->engine->epfd >= 0)
            epoll_ctl(p->engine->epfd, EPOLL_CTL_DEL, s->fd, NULL);
        s->events = 0;
        if (!graceful) {
            struct linger reset = {1, 0};
            setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
        }
        close(s->fd);  /* no retry on EINTR: on Linux the descriptor is closed anyway */
        s->fd = -1;
        free_pending(&p->way[i]);
    }
    unlink_pair(p);
    push_pair(p, 2);
}

/* The ended pair `p` is reported by the caller's return value: take it off the ended list and
   drop the engine's reference (the caller holds one). */
static void claim(Pair *p) {
    if (p->listed != 2)
        return;
    unlink_pair(p);
    Py_CLEAR(p->owner);
    Engine *e = p->engine;
    p->engine = NULL;
    Py_DECREF(e);
    Py_DECREF(p);
}

/* The owners of the ended pairs as a list, the pairs released; NULL (exception set) if the
   list cannot be made: they stay listed for the next call. */
static PyObject *report(Engine *e) {
    Py_ssize_t n = 0;
    for (Pair *p = e->ended; p != NULL; p = p->next)
        n++;
    PyObject *owners = PyList_New(n);
    if (owners == NULL)
        return NULL;
    Py_ssize_t i = 0;
    while (e->ended != NULL) {
        Pair *p = e->ended;
        unlink_pair(p);
        PyObject *owner = p->owner;
        p->owner = NULL;
        PyList_SET_ITEM(owners, i++, owner != NULL ? owner : Py_NewRef(Py_None));
        p->engine = NULL;
        Py_DECREF(e);  /* the pair's reference; the caller still holds one to `e` */
        Py_DECREF(p);
    }
    return owners;
}

/* -- epoll interest -------------------------------------------------------------------------- */

/* Read socket `i` while its way is open and has nothing pending; wait until it is writable while
   the other way has something pending for it. Nothing to wait for: out of the epoll set (epoll
   would still report EPOLLHUP/EPOLLERR on it, level-triggered, with nothing to do about them);
   a reset of such a socket (its EOF read, nothing to send it) shows at the next send to it, or
   the idle timeout ends the pair, as with uvloop once a transport stopped reading. */
static int watch(Pair *p, int i) {
    Sock *s = &p->sock[i];
    uint32_t want = 0;
    if (!p->way[i].eof && p->way[i].pending_len == 0)
        want |= EPOLLIN;
    if (p->way[1 - i].pending_len != 0)
        want |= EPOLLOUT;
    if (want == s->events)
        return 0;
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = want;
    ev.data.ptr = s;
    int op = s->events == 0 ? EPOLL_CTL_ADD : want == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (epoll_ctl(p->engine->epfd, op, s->fd, &ev) < 0)
        return -1;
    s->events = want;
    return 0;
}

/* After a step: update both sockets' interest, and close once both ways have ended. An epoll
   failure (ENOMEM, ENOSPC) leaves no way to hear from a socket: reset the pair. */
static void settle(Pair *p) {
    if (p->done)
        return;
    if (p->way[0].shut && p->way[1].shut) {
        end_pair(p, 1);
        return;
    }
    if (watch(p, 0) < 0 || watch(p, 1) < 0)
        end_pair(p, 0);
}

/* -- copying --------------------------------------------------------------------------------- */

/* Way `i` has ended at its source and nothing is pending: pass the EOF on. */
static int shut_way(Pair *p, int i) {
    Way *w = &p->way[i];
    if (w->shut)
        return 0;
    if (shutdown(p->sock[1 - i].fd, SHUT_WR) < 0) {
        end_pair(p, 0);  /* ENOTCONN: the destination is gone */
        return -1;
    }
    w->shut = 1;
    return 0;
}

/* send() what it takes of `data` to way `i`'s destination; the rest becomes pending. -1: the
   pair was reset. */
static int send_way(Pair *p, int i, const char *data, size_t len) {
    int fd = p->sock[1 - i].fd;
    size_t sent = 0;
    for (int tries = 0; sent < len && tries < MAX_RETRIES; tries++) {
        ssize_t n = send(fd, data + sent, len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            sent += (size_t)n;
            if (sent < len)
                break;  /* a short send: the socket buffer is full, a retry would EAGAIN */
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        end_pair(p, 0);  /* EPIPE, ECONNRESET...: nobody left to send to */
        return -1;
    }
    if (sent < len) {
        Way *w = &p->way[i];
        char *rest = malloc(len - sent);
        if (rest == NULL) {
            end_pair(p, 0);
            return -1;
        }
        memcpy(rest, data + sent, len - sent);
        w->pending = rest;
        w->pending_off = 0;
        w->pending_len = len - sent;
    }
    return 0;
}

/* Socket 1 - i is writable: send what way `i` has pending; once all is sent, pass on an EOF
   that came meanwhile, or read the source again (settle() does). */
static void flush_way(Pair *p, int i) {
    Way *w = &p->way[i];
    int fd = p->sock[1 - i].fd;
    for (int tries = 0; w->pending_len != 0 && tries < MAX_RETRIES; tries++) {
        size_t left = w->pending_len - w->pending_off;
        ssize_t n = send(fd, w->pending + w->pending_off, left, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            w->pending_off += (size_t)n;
            if (w->pending_off == w->pending_len)
                free_pending(w);
            else
                break;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        end_pair(p, 0);
        return;
    }
    if (w->pending_len == 0 && w->eof)
        shut_way(p, i);
}

/* Socket `i` is readable: copy what it has to the other socket, at most MAX_READS chunks. */
static void pump_way(Pair *p, int i) {
    Way *w = &p->way[i];
    int fd = p->sock[i].fd;
    for (int reads = 0, tries = 0; reads < MAX_READS && tries < MAX_RETRIES; tries++) {
        ssize_t n = recv(fd, chunk, CHUNK, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            end_pair(p, 0);  /* ECONNRESET...: the other side goes too, at once */
            return;
        }
        if (n == 0) {
            w->eof = 1;
            shut_way(p, i);  /* nothing is pending: we only read while nothing is */
            return;
        }
        reads++;
        w->bytes += (uint64_t)n;
        if (send_way(p, i, chunk, (size_t)n) < 0 || w->pending_len != 0)
            return;  /* reset, or the destination is full: stop reading this side */
        if (n < CHUNK)
            return;  /* most likely all there was; level-triggered epoll says if not */
    }
}

/* One ready socket: first what can be sent to it, then what can be read from it. EPOLLERR and
   EPOLLHUP go to whichever of the two is wanted: the recv() or send() reports the error. */
static void on_ready(Sock *s, uint32_t events) {
    Pair *p = s->pair;
    if (p->done)
        return;  /* ended earlier in this batch */
    int i = (int)(s - p->sock);
    const uint32_t trouble = EPOLLERR | EPOLLHUP;
    if ((events & (EPOLLOUT | trouble)) && p->way[1 - i].pending_len != 0)
        flush_way(p, 1 - i);
    if (!p->done && (events & (EPOLLIN | trouble)) && !p->way[i].eof &&
        p->way[i].pending_len == 0)
        pump_way(p, i);
    settle(p);
}

/* -- Pair ------------------------------------------------------------------------------------ */

PyDoc_STRVAR(pair_doc,
    "One relayed connection: a client socket and a server socket (Engine.add makes them).");

static int pair_traverse(Pair *p, visitproc visit, void *arg) {
    Py_VISIT(p->owner);
    Py_VISIT(p->engine);
    return 0;
}

static int pair_clear(Pair *p) {
    Py_CLEAR(p->owner);
    return 0;
}

static void pair_dealloc(Pair *p) {
    PyObject_GC_UnTrack(p);
    /* a live pair is referenced by its engine: here it has ended and been reported */
    Py_CLEAR(p->owner);
    Py_XDECREF(p->engine);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

PyDoc_STRVAR(pair_abort_doc,
    "abort() -> bool\n\nReset both sockets now. True when this ended the pair (the caller "
    "reports it); False when it had ended already (it is or was reported elsewhere).");

static PyObject *pair_abort(Pair *p, PyObject *Py_UNUSED(ignored)) {
    if (p->done)
        Py_RETURN_FALSE;
    end_pair(p, 0);
    claim(p);
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(pair_close_doc,
    "close() -> bool\n\nThe idle timeout's close: graceful when nothing is pending either way, "
    "else a reset. True when this ended the pair, as abort().");

static PyObject *pair_close(Pair *p, PyObject *Py_UNUSED(ignored)) {
    if (p->done)
        Py_RETURN_FALSE;
    end_pair(p, p->way[0].pending_len == 0 && p->way[1].pending_len == 0);
    claim(p);
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(pair_take_doc,
    "take() -> (int, int)\n\nBytes read from the client and from the server since the last "
    "take().");

static PyObject *pair_take(Pair *p, PyObject *Py_UNUSED(ignored)) {
    uint64_t up = p->way[0].bytes - p->way[0].taken;
    uint64_t down = p->way[1].bytes - p->way[1].taken;
    p->way[0].taken = p->way[0].bytes;
    p->way[1].taken = p->way[1].bytes;
    return Py_BuildValue("(KK)", (unsigned long long)up, (unsigned long long)down);
}

static PyObject *pair_get_up(Pair *p, void *Py_UNUSED(closure)) {
    return PyLong_FromUnsignedLongLong(p->way[0].bytes);
}

static PyObject *pair_get_down(Pair *p, void *Py_UNUSED(closure)) {
    return PyLong_FromUnsignedLongLong(p->way[1].bytes);
}

static PyObject *pair_get_done(Pair *p, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(p->done);
}

static PyObject *pair_get_clean(Pair *p, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(p->clean);
}

static PyObject *pair_get_pending(Pair *p, void *Py_UNUSED(closure)) {
    size_t n = 0;
    for (int i = 0; i < 2; i++)
        n += p->way[i].pending_len - p->way[i].pending_off;
    return PyLong_FromSize_t(n);
}

static PyMethodDef pair_methods[] = {
    {"abort", (PyCFunction)pair_abort, METH_NOARGS, pair_abort_doc},
    {"close", (PyCFunction)pair_close, METH_NOARGS, pair_close_doc},
    {"take", (PyCFunction)pair_take, METH_NOARGS, pair_take_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef pair_getset[] = {
    {"up", (getter)pair_get_up, NULL, "bytes read from the client", NULL},
    {"down", (getter)pair_get_down, NULL, "bytes read from the server", NULL},
    {"done", (getter)pair_get_done, NULL, "both sockets are closed", NULL},
    {"clean", (getter)pair_get_clean, NULL, "closed gracefully (both ways had ended)", NULL},
    {"pending", (getter)pair_get_pending, NULL, "bytes read, not yet sent (both ways)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PairType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "portico.proxy._relay.Pair",
    .tp_basicsize = sizeof(Pair),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = pair_doc,
    .tp_traverse = (traverseproc)pair_traverse,
    .tp_clear = (inquiry)pair_clear,
    .tp_dealloc = (destructor)pair_dealloc,
    .tp_methods = pair_methods,
    .tp_getset = pair_getset,
};

/* -- Engine ---------------------------------------------------------------------------------- */

PyDoc_STRVAR(engine_doc,
    "Engine()\n\nOne event loop's relayed sockets in an epoll set of its own: watch fileno() "
    "with loop.add_reader and call run() when it is readable; call sweep() every few seconds.");

static PyObject *engine_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, ":Engine", keywords))
        return NULL;
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Engine *e = (Engine *)type->tp_alloc(type, 0);
    if (e == NULL) {
        close(epfd);
        return NULL;
    }
    e->epfd = epfd;
    e->live = e->ended = NULL;
    e->count = 0;
    return (PyObject *)e;
}

/* Reset every live pair; they join the ended list. */
static void reset_all(Engine *e) {
    while (e->live != NULL)
        end_pair(e->live, 0);
}

static int engine_traverse(Engine *e, visitproc visit, void *arg) {
    for (Pair *p = e->live; p != NULL; p = p->next)
        Py_VISIT(p);
    for (Pair *p = e->ended; p != NULL; p = p->next)
        Py_VISIT(p);
    return 0;
}

/* Garbage (the engine, its pairs and their owners unreachable): the sockets are reset, the
   pairs released. Each listed pair holds a reference to the engine: the engine cannot be
   deallocated while a pair is listed, so releasing them here is what frees it. */
static int engine_clear(Engine *e) {
    reset_all(e);
    while (e->ended != NULL) {
        Pair *p = e->ended;
        unlink_pair(p);
        Py_CLEAR(p->owner);
        p->engine = NULL;
        Py_DECREF(e);
        Py_DECREF(p);
    }
    return 0;
}

static void engine_dealloc(Engine *e) {
    PyObject_GC_UnTrack(e);
    /* no listed pair is left: each would hold a reference to the engine */
    if (e->epfd >= 0)
        close(e->epfd);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

PyDoc_STRVAR(engine_fileno_doc, "fileno() -> int\n\nThe epoll descriptor, for loop.add_reader.");

static PyObject *engine_fileno(Engine *e, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(e->epfd);
}

PyDoc_STRVAR(engine_add_doc,
    "add(client_fd, server_fd, to_server, client_eof, idle_timeout, owner) -> Pair\n\n"
    "Relay between two connected sockets, which the engine now owns (it closes them, also when "
    "this raises, unless for arguments of the wrong type). `to_server` is sent to the server first; `client_eof`: the client already "
    "shut its write side; `owner` is what run() or sweep() report when the pair ends. A pair "
    "that ended already here (an error) is returned with `done` set and is reported by no one: "
    "the caller ends it.");

static PyObject *engine_add(Engine *e, PyObject *args) {
    int client_fd, server_fd, client_eof;
    Py_buffer to_server;
    double idle_timeout;
    PyObject *owner;
    if (!PyArg_ParseTuple(args, "iiy*pdO:add", &client_fd, &server_fd, &to_server, &client_eof,
                          &idle_timeout, &owner))
        return NULL;  /* arguments of the wrong type: the descriptors stay the caller's */
    if (e->epfd < 0) {
        PyBuffer_Release(&to_server);
        close(client_fd);
        close(server_fd);
        PyErr_SetString(PyExc_ValueError, "the engine is closed");
        return NULL;
    }
    Pair *p = PyObject_GC_New(Pair, &PairType);
    if (p == NULL) {
        PyBuffer_Release(&to_server);
        close(client_fd);
        close(server_fd);
        return NULL;
    }
    memset((char *)p + sizeof(PyObject), 0, sizeof(Pair) - sizeof(PyObject));
    p->engine = (Engine *)Py_NewRef(e);
    p->owner = Py_NewRef(owner);
    p->sock[0] = (Sock){p, client_fd, 0};
    p->sock[1] = (Sock){p, server_fd, 0};
    p->idle_timeout = idle_timeout;
    p->quiet_since = monotonic();
    Py_INCREF(p);  /* the engine's reference, while listed */
    push_pair(p, 1);
    PyObject_GC_Track(p);
    int step = 0;
    if (to_server.len > 0)
        step = send_way(p, 0, to_server.buf, (size_t)to_server.len);
    PyBuffer_Release(&to_server);
    if (step == 0 && client_eof) {
        p->way[0].eof = 1;
        if (p->way[0].pending_len == 0)
            shut_way(p, 0);
    }
    settle(p);
    claim(p);  /* if it ended already: the caller reports it (pair.done) */
    return (PyObject *)p;
}

PyDoc_STRVAR(engine_run_doc,
    "run() -> list | tuple\n\nCopy what the ready sockets have (at most 64 of them); the owners "
    "of the pairs that ended, or () when none did.");

static PyObject *engine_run(Engine *e, PyObject *Py_UNUSED(ignored)) {
    if (e->epfd >= 0) {
        struct epoll_event events[MAX_EVENTS];
        int n;
        do
            n = epoll_wait(e->epfd, events, MAX_EVENTS, 0);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        /* a pair that ends in this batch stays allocated (on the ended list) until report(),
           so a later event of the batch still points at valid memory */
        for (int k = 0; k < n; k++)
            on_ready((Sock *)events[k].data.ptr, events[k].events);
    }
    if (e->ended == NULL)
        return PyTuple_New(0);  /* the shared empty tuple: no allocation */
    return report(e);
}

PyDoc_STRVAR(engine_sweep_doc,
    "sweep() -> (moved, ended)\n\nThe idle timeout and the byte counters: close the pairs that "
    "moved no byte for their idle_timeout (graceful unless something is pending); `moved`: "
    "the owners of the pairs that moved bytes since the last sweep (for Pair.take()); "
    "`ended`: the owners of the pairs that ended.");

static PyObject *engine_sweep(Engine *e, PyObject *Py_UNUSED(ignored)) {
    double now = monotonic();
    PyObject *moved = PyList_New(0);
    if (moved == NULL)
        return NULL;
    Pair *next;
    for (Pair *p = e->live; p != NULL; p = next) {
        next = p->next;  /* p may move to the ended list */
        uint64_t total = p->way[0].bytes + p->way[1].bytes;
        if (total != p->swept) {
            p->swept = total;
            p->quiet_since = now;
            if (p->owner != NULL && PyList_Append(moved, p->owner) < 0) {
                Py_DECREF(moved);
                return NULL;
            }
        } else if (p->idle_timeout > 0 && now - p->quiet_since >= p->idle_timeout) {
            end_pair(p, p->way[0].pending_len == 0 && p->way[1].pending_len == 0);
        }
    }
    PyObject *ended = report(e);
    if (ended == NULL) {
        Py_DECREF(moved);
        return NULL;
    }
    return Py_BuildValue("(NN)", moved, ended);
}

PyDoc_STRVAR(engine_close_doc,
    "close() -> list\n\nReset every pair and close the epoll descriptor; the owners of the "
    "pairs that ended (not yet reported).");

static PyObject *engine_close(Engine *e, PyObject *Py_UNUSED(ignored)) {
    reset_all(e);
    PyObject *ended = report(e);
    if (ended != NULL && e->epfd >= 0) {
        close(e->epfd);
        e->epfd = -1;
    }
    return ended;
}

static PyObject *engine_get_pairs(Engine *e, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(e->count);
}

static PyObject *engine_get_closed(Engine *e, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(e->epfd < 0);
}

static PyMethodDef engine_methods[] = {
    {"fileno", (PyCFunction)engine_fileno, METH_NOARGS, engine_fileno_doc},
    {"add", (PyCFunction)engine_add, METH_VARARGS, engine_add_doc},
    {"run", (PyCFunction)engine_run, METH_NOARGS, engine_run_doc},
    {"sweep", (PyCFunction)engine_sweep, METH_NOARGS, engine_sweep_doc},
    {"close", (PyCFunction)engine_close, METH_NOARGS, engine_close_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef engine_getset[] = {
    {"pairs", (getter)engine_get_pairs, NULL, "live pairs", NULL},
    {"closed", (getter)engine_get_closed, NULL, "close() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "portico.proxy._relay.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = engine_doc,
    .tp_new = engine_new,
    .tp_traverse = (traverseproc)engine_traverse,
    .tp_clear = (inquiry)engine_clear,
    .tp_dealloc = (destructor)engine_dealloc,
    .tp_methods = engine_methods,
    .tp_getset = engine_getset,
};

/* -- module ---------------------------------------------------------------------------------- */

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "portico.proxy._relay",
    .m_doc = "The TCP relay's byte copy in C (see the comment at the top of _relay.c).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__relay(void) {
    if (PyType_Ready(&PairType) < 0 || PyType_Ready(&EngineType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&relay_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Engine", (PyObject *)&EngineType) < 0 ||
        PyModule_AddObjectRef(m, "Pair", (PyObject *)&PairType) < 0 ||
        PyModule_AddIntConstant(m, "CHUNK", CHUNK) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
