/* portico.proxy._relay: the TCP relay's byte copy in C, on a thread of its own.

Why: a relayed read through uvloop costs ~3k instructions of libuv -> uvloop -> Python
callback -> transport.write, of which the copy itself is a few hundred
(bench/relaypath.py --mode l4 --callgrind). Here one epoll instance of our own holds every
relayed socket of a worker, and one thread per engine blocks in epoll_wait() and copies what
every ready socket has: recv() into a 64 KiB buffer of its own, send() to the other socket.
No Python call per read, and no event loop turn either: the worker's event loop only hears
of a pair when it ended (an eventfd it watches with loop.add_reader: `Engine.fileno()`).

Two halves per relayed connection:
- `Conn` (malloc'd, C only): the sockets, what is pending, the byte counts. The thread sees
  only these, and only with the engine's mutex held.
- `Pair` (a Python object): what Python holds; its owner (reported when the pair ends), and
  once the pair ended, the final counts. The thread never touches a Python object and never
  takes the GIL.

Locking (one mutex per engine, `mu`):
- every Conn field and the engine's C lists (live, ended, dead) are read or written with `mu`
  held, by the thread or by a Python-side call;
- the thread holds `mu` for one bounded batch (at most MAX_EVENTS ready sockets, MAX_READS
  recv()s each; all sockets non-blocking): it never waits for anything while holding it;
- a Python-side call (GIL held) only try-locks `mu` with the GIL held; when that fails it
  releases the GIL, locks, does its C-only step, unlocks and only then takes the GIL back
  (LOCKED below). So nobody ever waits for the GIL while holding `mu`, and nothing that can
  run Python code (allocation of objects, a dealloc, the GC) runs with `mu` held: the Python
  half of each step (lists, reference counts) is done before or after, with the GIL;
- the Python-side list of listed Pairs (`Engine.pairs_head`, which the GC traverses) and every
  Pair field are touched only with the GIL held;
- one Python thread uses an engine and its pairs (its event loop's thread): a call that waits
  for the mutex without the GIL relies on no other thread reporting its pairs meanwhile.

Lifetime of a Conn: live (in the epoll set) -> ended (sockets closed: epoll_ctl(DEL) before
close(), so no later epoll_wait() returns them; on the engine's `ended` list) -> reported
(Python took its final counts into the Pair) -> dead -> freed. An epoll_wait() already under
way when a Conn ended may still return events pointing at it (the thread takes `mu` only after
epoll_wait() returned): a dead Conn is stamped with the count of batches done + 1 and freed
by the thread at the end of a batch once that many are done, i.e. after the batch that handles
(skips: it is `done`) any such event; close() and dealloc free what is left after joining.

Completion: a pair ends exactly once, and its owner (any Python object, the Relay) is reported
exactly once: in the list `reap()` or `sweep()` returns, or by the return value of the call
that ended it (`add` -> `Pair.done`, `Pair.abort()`, `Pair.close()`). The thread signals the
eventfd at the end of a batch that left something on the `ended` list (once until reaped).

Per pair of sockets (client, server) and per way (up: client -> server, down: server -> client):
- flow control: a send that takes less than was read keeps the rest in a heap buffer (freed
  once sent), stops reading the source and waits for EPOLLOUT on the destination, like
  uvloop's pause_reading / resume_writing;
- half-close: an EOF read on one side becomes shutdown(SHUT_WR) of the other once what is
  pending for it is sent; the other way keeps flowing; when both ways have ended, both sockets
  are closed gracefully;
- an error on either side (reset, broken pipe) resets the other (SO_LINGER 0, then close), as
  portico.proxy.l4.Relay.side_lost does: graceful only when both ways ended cleanly.

Idle timeout and counters: `sweep()`, called by Python every few seconds, visits every live
pair: one that read nothing since the last sweep for `idle_timeout` seconds is closed (reset if
something is still pending: a peer that stopped reading would hold a graceful close forever),
and the owners of pairs that moved bytes are returned so that Python folds `Pair.take()` into
its byte counters. No clock is read per chunk.

The thread starts at the first add() (a worker forks before it relays anything; a fork after
that would leave the child an engine without its thread), with every signal blocked (Python's
signal handling stays on the main thread); close() and dealloc wake it (a second eventfd in
the epoll set), join it and free everything.
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)  /* one recv(); also the most a way ever holds pending */
#define MAX_EVENTS 64      /* ready sockets handled per batch */
#define MAX_READS 4        /* recv()s per ready socket per batch, while each fills CHUNK */
#define MAX_RETRIES 8      /* EINTR retries of one call (non-blocking calls hardly see it) */
#define REAP_BATCH 128     /* ended pairs taken per lock by reap() and friends */

typedef struct Conn Conn;
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
    Conn *conn;
    int fd;           /* -1 once closed */
    uint32_t events;  /* what epoll watches on it now; 0: not in the epoll set */
} Sock;

/* The C half of a pair: everything here is guarded by the engine's mutex. */
struct Conn {
    Engine *engine;     /* not a reference: a Conn never outlives its engine's close/dealloc */
    void *pair;         /* its Pair, opaque here: only Python-side code (GIL held) uses it */
    Sock sock[2];       /* 0: client, 1: server */
    Way way[2];         /* 0: up (client -> server), 1: down (server -> client) */
    Conn *prev, *next;  /* in the engine's live, ended or dead list */
    double idle_timeout;  /* <= 0: none */
    double quiet_since;   /* the sweep that last saw bytes move (or add) */
    uint64_t swept;       /* up + down bytes at that sweep */
    uint64_t free_after;  /* dead: freed once the thread has done this many batches */
    uint8_t done;         /* both sockets closed */
    uint8_t clean;        /* ... gracefully: both ways had ended */
    uint8_t listed;       /* LIVE, ENDED, DEAD, or 0: none */
};

enum { LIVE = 1, ENDED = 2, DEAD = 3 };

/* A Conn's end as Python takes it (copied under the mutex, applied to the Pair after). */
typedef struct {
    Pair *pair;
    uint64_t bytes[2], taken[2];
    uint8_t clean;
} Final;

/* The Python half: GIL only. */
struct Pair {
    PyObject_HEAD
    Engine *engine;     /* strong reference while listed */
    PyObject *owner;    /* reported once at the end, then dropped */
    Conn *conn;         /* NULL once reported (then `fin` holds the end) */
    Pair *prev, *next;  /* in the engine's listed pairs while `conn` is set */
    Final fin;          /* the counts at the end */
};

struct Engine {
    PyObject_HEAD
    /* set up once (before the thread starts), closed after it is joined */
    int epfd;        /* -1 once closed */
    int wake_fd;     /* eventfd: the thread -> the loop, "pairs ended" (Engine.fileno) */
    int stop_fd;     /* eventfd in the epoll set: the loop -> the thread, "stop" */
    pthread_t thread;
    uint8_t started;  /* the thread runs (until joined) */
    uint8_t closed;   /* close() was called */
    uint8_t mu_ok;    /* `mu` was initialised */
    unsigned forks;   /* `forks` when the thread started: another value, a forked child's */
    /* guarded by mu */
    pthread_mutex_t mu;
    Conn *live;      /* open sockets (doubly linked) */
    Conn *ended;     /* ended, not yet reported */
    Conn *dead;      /* reported, to free once no epoll event can point at them */
    Py_ssize_t count;  /* live conns */
    uint64_t batches;  /* batches the thread has done */
    uint8_t signalled;  /* wake_fd written since the last reap() */
    uint8_t stopping;
    /* GIL only */
    Pair *pairs_head;  /* listed pairs: not yet reported (each a reference) */
};

static PyTypeObject PairType;
static PyTypeObject EngineType;

/* Forks this process made children of so far, counted in each child (pthread_atfork). A child
   has no copy of its parent's engine threads, and their mutexes may stay locked forever: an
   engine whose thread started before a fork is orphaned in the child (unusable; its
   descriptors are still closed). Portico's workers fork before they relay anything. */
static volatile unsigned forks;

static void count_fork(void) {
    forks++;
}

static int orphaned(Engine *e) {
    return e->started && e->forks != forks;
}

static double monotonic(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* Run `step` (C only: no Python call, no GIL needed) with the engine's mutex held. The GIL is
   held by the caller; it is released only when the mutex is busy (the thread is in a batch),
   and taken back once the mutex is released: never wait for the GIL holding the mutex. */
#define LOCKED(e, step)                                  \
    do {                                                 \
        if (pthread_mutex_trylock(&(e)->mu) == 0) {      \
            step;                                        \
            pthread_mutex_unlock(&(e)->mu);              \
        } else {                                         \
            Py_BEGIN_ALLOW_THREADS                       \
            pthread_mutex_lock(&(e)->mu);                \
            step;                                        \
            pthread_mutex_unlock(&(e)->mu);              \
            Py_END_ALLOW_THREADS                         \
        }                                                \
    } while (0)

/* -- Conn lists (mutex held) ------------------------------------------------------------------- */

static Conn **list_head(Engine *e, int list) {
    return list == LIVE ? &e->live : list == ENDED ? &e->ended : &e->dead;
}

static void unlink_conn(Conn *c) {
    Engine *e = c->engine;
    Conn **head = list_head(e, c->listed);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    if (c->listed == LIVE)
        e->count--;
    c->listed = 0;
}

static void push_conn(Conn *c, int list) {
    Engine *e = c->engine;
    Conn **head = list_head(e, list);
    c->prev = NULL;
    c->next = *head;
    if (*head != NULL)
        (*head)->prev = c;
    *head = c;
    c->listed = (uint8_t)list;
    if (list == LIVE)
        e->count++;
}

/* -- ending (mutex held) ------------------------------------------------------------------- */

static void free_pending(Way *w) {
    free(w->pending);
    w->pending = NULL;
    w->pending_off = w->pending_len = 0;
}

/* Close both sockets, gracefully or with a reset (SO_LINGER 0: RST, nothing lingers), and move
   the conn to the ended list. Out of the epoll set first: closing the descriptor drops it only
   if no other descriptor shares the socket (a fork, a dup), and no later epoll_wait() returns
   it once this returned. */
static void end_conn(Conn *c, int graceful) {
    if (c->done)
        return;
    c->done = 1;
    c->clean = (uint8_t)(graceful != 0);
    for (int i = 0; i < 2; i++) {
        Sock *s = &c->sock[i];
        if (s->fd < 0)
            continue;
        if (s->events != 0)
            epoll_ctl(c->engine->epfd, EPOLL_CTL_DEL, s->fd, NULL);
        s->events = 0;
        if (!graceful) {
            struct linger reset = {1, 0};
            setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
        }
        close(s->fd);  /* no retry on EINTR: on Linux the descriptor is closed anyway */
        s->fd = -1;
        free_pending(&c->way[i]);
    }
    unlink_conn(c);
    push_conn(c, ENDED);
}

/* The ended conn `c` is reported now: its end into `f`, and it goes to the dead list. */
static void take_final(Conn *c, Final *f) {
    f->pair = (Pair *)c->pair;
    for (int i = 0; i < 2; i++) {
        f->bytes[i] = c->way[i].bytes;
        f->taken[i] = c->way[i].taken;
    }
    f->clean = c->clean;
    unlink_conn(c);
    c->free_after = c->engine->batches + 1;
    push_conn(c, DEAD);
}

/* Up to `max` ended conns reported into `out`; how many. */
static int take_ended(Engine *e, Final *out, int max) {
    int n = 0;
    while (n < max && e->ended != NULL)
        take_final(e->ended, &out[n++]);
    return n;
}

static void free_conn(Conn *c) {
    unlink_conn(c);
    free(c);
}

/* -- epoll interest (mutex held) ----------------------------------------------------------- */

/* Read socket `i` while its way is open and has nothing pending; wait until it is writable while
   the other way has something pending for it. Nothing to wait for: out of the epoll set (epoll
   would still report EPOLLHUP/EPOLLERR on it, level-triggered, with nothing to do about them);
   a reset of such a socket (its EOF read, nothing to send it) shows at the next send to it, or
   the idle timeout ends the pair, as with uvloop once a transport stopped reading. */
static int watch(Conn *c, int i) {
    Sock *s = &c->sock[i];
    uint32_t want = 0;
    if (!c->way[i].eof && c->way[i].pending_len == 0)
        want |= EPOLLIN;
    if (c->way[1 - i].pending_len != 0)
        want |= EPOLLOUT;
    if (want == s->events)
        return 0;
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = want;
    ev.data.ptr = s;
    int op = s->events == 0 ? EPOLL_CTL_ADD : want == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (epoll_ctl(c->engine->epfd, op, s->fd, &ev) < 0)
        return -1;
    s->events = want;
    return 0;
}

/* After a step: update both sockets' interest, and close once both ways have ended. An epoll
   failure (ENOMEM, ENOSPC) leaves no way to hear from a socket: reset the pair. */
static void settle(Conn *c) {
    if (c->done)
        return;
    if (c->way[0].shut && c->way[1].shut) {
        end_conn(c, 1);
        return;
    }
    if (watch(c, 0) < 0 || watch(c, 1) < 0)
        end_conn(c, 0);
}

/* -- copying (mutex held) ------------------------------------------------------------------ */

/* Way `i` has ended at its source and nothing is pending: pass the EOF on. */
static int shut_way(Conn *c, int i) {
    Way *w = &c->way[i];
    if (w->shut)
        return 0;
    if (shutdown(c->sock[1 - i].fd, SHUT_WR) < 0) {
        end_conn(c, 0);  /* ENOTCONN: the destination is gone */
        return -1;
    }
    w->shut = 1;
    return 0;
}

/* send() what it takes of `data` to way `i`'s destination; the rest becomes pending. -1: the
   pair was reset. */
static int send_way(Conn *c, int i, const char *data, size_t len) {
    int fd = c->sock[1 - i].fd;
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
        end_conn(c, 0);  /* EPIPE, ECONNRESET...: nobody left to send to */
        return -1;
    }
    if (sent < len) {
        Way *w = &c->way[i];
        char *rest = malloc(len - sent);
        if (rest == NULL) {
            end_conn(c, 0);
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
static void flush_way(Conn *c, int i) {
    Way *w = &c->way[i];
    int fd = c->sock[1 - i].fd;
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
        end_conn(c, 0);
        return;
    }
    if (w->pending_len == 0 && w->eof)
        shut_way(c, i);
}

/* Socket `i` is readable: copy what it has to the other socket through `chunk` (the thread's
   buffer), at most MAX_READS chunks. */
static void pump_way(Conn *c, int i, char *chunk) {
    Way *w = &c->way[i];
    int fd = c->sock[i].fd;
    for (int reads = 0, tries = 0; reads < MAX_READS && tries < MAX_RETRIES; tries++) {
        ssize_t n = recv(fd, chunk, CHUNK, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            end_conn(c, 0);  /* ECONNRESET...: the other side goes too, at once */
            return;
        }
        if (n == 0) {
            w->eof = 1;
            shut_way(c, i);  /* nothing is pending: we only read while nothing is */
            return;
        }
        reads++;
        w->bytes += (uint64_t)n;
        if (send_way(c, i, chunk, (size_t)n) < 0 || w->pending_len != 0)
            return;  /* reset, or the destination is full: stop reading this side */
        if (n < CHUNK)
            return;  /* most likely all there was; level-triggered epoll says if not */
    }
}

/* One ready socket: first what can be sent to it, then what can be read from it. EPOLLERR and
   EPOLLHUP go to whichever of the two is wanted: the recv() or send() reports the error. */
static void on_ready(Sock *s, uint32_t events, char *chunk) {
    Conn *c = s->conn;
    if (c->done)
        return;  /* ended earlier in this batch, or by Python since epoll_wait() returned */
    int i = (int)(s - c->sock);
    const uint32_t trouble = EPOLLERR | EPOLLHUP;
    if ((events & (EPOLLOUT | trouble)) && c->way[1 - i].pending_len != 0)
        flush_way(c, 1 - i);
    if (!c->done && (events & (EPOLLIN | trouble)) && !c->way[i].eof &&
        c->way[i].pending_len == 0)
        pump_way(c, i, chunk);
    settle(c);
}

/* -- the thread ---------------------------------------------------------------------------- */

/* Free the dead conns no epoll event can point at any more (mutex held). */
static void free_dead(Engine *e, int all) {
    Conn *next;
    for (Conn *c = e->dead; c != NULL; c = next) {
        next = c->next;
        if (all || c->free_after <= e->batches)
            free_conn(c);
    }
}

static void *engine_thread(void *arg) {
    Engine *e = arg;
    char *chunk = malloc(CHUNK);
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(e->epfd, events, MAX_EVENTS, -1);
        if (n < 0 && errno != EINTR)
            n = 0;  /* EBADF/EINVAL cannot happen (the set outlives the thread): go on */
        pthread_mutex_lock(&e->mu);
        if (e->stopping) {
            pthread_mutex_unlock(&e->mu);
            break;
        }
        for (int k = 0; k < n; k++) {
            Sock *s = events[k].data.ptr;
            if (s == NULL)
                continue;  /* stop_fd: `stopping` says */
            if (chunk != NULL)
                on_ready(s, events[k].events, chunk);
            else
                end_conn(s->conn, 0);  /* no buffer to copy through (ENOMEM at start) */
        }
        e->batches++;
        free_dead(e, 0);
        if (e->ended != NULL && !e->signalled) {
            uint64_t one = 1;
            ssize_t w;
            do
                w = write(e->wake_fd, &one, sizeof one);
            while (w < 0 && errno == EINTR);
            /* EAGAIN: the counter is full (it is read at each reap): readable anyway */
            e->signalled = 1;
        }
        pthread_mutex_unlock(&e->mu);
    }
    free(chunk);
    return NULL;
}

/* Start the thread, every signal blocked in it (it inherits the mask it is created with).
   0, or an errno. GIL held; the thread never takes it. */
static int start_thread(Engine *e) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&e->thread, NULL, engine_thread, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err == 0) {
        e->started = 1;
        e->forks = forks;
    }
    return err;
}

/* Stop and join the thread, if it runs. `release_gil`: wait for it without the GIL (not from
   a dealloc or the GC, which wait with it: the thread never needs it). */
static void stop_thread(Engine *e, int release_gil) {
    if (!e->started)
        return;
    if (release_gil) {
        LOCKED(e, e->stopping = 1);
    } else {
        pthread_mutex_lock(&e->mu);  /* the thread never waits for the GIL: no deadlock */
        e->stopping = 1;
        pthread_mutex_unlock(&e->mu);
    }
    uint64_t one = 1;
    ssize_t w;
    do
        w = write(e->stop_fd, &one, sizeof one);
    while (w < 0 && errno == EINTR);
    if (release_gil) {
        Py_BEGIN_ALLOW_THREADS
        pthread_join(e->thread, NULL);
        Py_END_ALLOW_THREADS
    } else {
        pthread_join(e->thread, NULL);
    }
    e->started = 0;
}

/* -- Pair ---------------------------------------------------------------------------------- */

/* With the GIL, after `f` was taken under the mutex: the pair is reported; its owner is
   returned (a new reference, Py_None if it had none) and the engine's reference to the pair
   and the pair's to the engine are dropped. The caller holds a reference to the engine. */
static PyObject *settle_pair(const Final *f) {
    Pair *p = f->pair;
    Engine *e = p->engine;
    p->fin = *f;
    p->conn = NULL;
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        e->pairs_head = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
    PyObject *owner = p->owner;
    p->owner = NULL;
    p->engine = NULL;
    Py_DECREF(e);
    Py_DECREF(p);
    return owner != NULL ? owner : Py_NewRef(Py_None);
}

/* Report the ended pairs (already taken) in `fins` into the list `owners`, or drop their owners
   if `owners` is NULL. -1 if appending failed: the rest are reported all the same (dropped). */
static int settle_all(PyObject *owners, const Final *fins, int n) {
    int status = 0;
    for (int k = 0; k < n; k++) {
        PyObject *owner = settle_pair(&fins[k]);
        if (owners != NULL && status == 0 && PyList_Append(owners, owner) < 0)
            status = -1;
        Py_DECREF(owner);
    }
    return status;
}

/* Every ended pair reported: their owners as a list. NULL (exception set) if the list cannot be
   made; then they stay ended for the next call. */
static PyObject *reap_all(Engine *e) {
    PyObject *owners = PyList_New(0);
    if (owners == NULL)
        return NULL;
    Final fins[REAP_BATCH];
    for (;;) {
        int n;
        LOCKED(e, n = take_ended(e, fins, REAP_BATCH));
        if (n == 0)
            break;
        if (settle_all(owners, fins, n) < 0) {
            Py_DECREF(owners);
            return NULL;  /* rare (no memory): the owners taken are lost, their pairs done */
        }
    }
    return owners;
}

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
    /* a listed pair is referenced by its engine: here it was reported (conn is NULL) */
    Py_CLEAR(p->owner);
    Py_XDECREF(p->engine);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

/* End the live pair `p` from Python (abort, or the idle close: graceful unless something is
   pending). True when this ended it (and reported it to the caller). */
static PyObject *pair_end(Pair *p, int reset) {
    Conn *c = p->conn;
    if (c == NULL || orphaned(p->engine))
        Py_RETURN_FALSE;
    Engine *e = (Engine *)Py_NewRef(p->engine);
    Final fin;
    int ended = 0;
    LOCKED(e, {
        if (!c->done) {
            end_conn(c, !reset && c->way[0].pending_len == 0 && c->way[1].pending_len == 0);
            take_final(c, &fin);
            ended = 1;
        }
    });
    if (ended)
        Py_DECREF(settle_pair(&fin));  /* the caller reports it */
    Py_DECREF(e);
    return PyBool_FromLong(ended);
}

PyDoc_STRVAR(pair_abort_doc,
    "abort() -> bool\n\nReset both sockets now. True when this ended the pair (the caller "
    "reports it); False when it had ended already (it is or was reported elsewhere).");

static PyObject *pair_abort(Pair *p, PyObject *Py_UNUSED(ignored)) {
    return pair_end(p, 1);
}

PyDoc_STRVAR(pair_close_doc,
    "close() -> bool\n\nThe idle timeout's close: graceful when nothing is pending either way, "
    "else a reset. True when this ended the pair, as abort().");

static PyObject *pair_close(Pair *p, PyObject *Py_UNUSED(ignored)) {
    return pair_end(p, 0);
}

/* The pair's counts (and what is pending) now: from its Conn under the mutex while listed.
   `done`: 0 live, 2 ended with a reset, 3 ended gracefully (1: orphaned, see `forks`). */
static void pair_counts(Pair *p, uint64_t bytes[2], size_t *pending, int *done, int take) {
    Conn *c = p->conn;
    if (c == NULL || orphaned(p->engine)) {
        for (int i = 0; i < 2; i++) {
            bytes[i] = p->fin.bytes[i] - (take ? p->fin.taken[i] : 0);
            if (take)
                p->fin.taken[i] = p->fin.bytes[i];
        }
        *pending = 0;
        *done = c == NULL ? 2 + p->fin.clean : 1;
        return;
    }
    size_t left = 0;
    int ended = 0;
    LOCKED(p->engine, {
        for (int i = 0; i < 2; i++) {
            bytes[i] = c->way[i].bytes - (take ? c->way[i].taken : 0);
            if (take)
                c->way[i].taken = c->way[i].bytes;
            left += c->way[i].pending_len - c->way[i].pending_off;
        }
        ended = c->done ? 2 + c->clean : 0;
    });
    *pending = left;
    *done = ended;
}

PyDoc_STRVAR(pair_take_doc,
    "take() -> (int, int)\n\nBytes read from the client and from the server since the last "
    "take().");

static PyObject *pair_take(Pair *p, PyObject *Py_UNUSED(ignored)) {
    uint64_t bytes[2];
    size_t pending;
    int done;
    pair_counts(p, bytes, &pending, &done, 1);
    return Py_BuildValue("(KK)", (unsigned long long)bytes[0], (unsigned long long)bytes[1]);
}

static PyObject *pair_get_up(Pair *p, void *Py_UNUSED(closure)) {
    uint64_t bytes[2];
    size_t pending;
    int done;
    pair_counts(p, bytes, &pending, &done, 0);
    return PyLong_FromUnsignedLongLong(bytes[0]);
}

static PyObject *pair_get_down(Pair *p, void *Py_UNUSED(closure)) {
    uint64_t bytes[2];
    size_t pending;
    int done;
    pair_counts(p, bytes, &pending, &done, 0);
    return PyLong_FromUnsignedLongLong(bytes[1]);
}

static PyObject *pair_get_done(Pair *p, void *Py_UNUSED(closure)) {
    uint64_t bytes[2];
    size_t pending;
    int done;
    pair_counts(p, bytes, &pending, &done, 0);
    return PyBool_FromLong(done);
}

static PyObject *pair_get_clean(Pair *p, void *Py_UNUSED(closure)) {
    uint64_t bytes[2];
    size_t pending;
    int done;
    pair_counts(p, bytes, &pending, &done, 0);
    return PyBool_FromLong(done == 3);
}

static PyObject *pair_get_pending(Pair *p, void *Py_UNUSED(closure)) {
    uint64_t bytes[2];
    size_t pending;
    int done;
    pair_counts(p, bytes, &pending, &done, 0);
    return PyLong_FromSize_t(pending);
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
    {"clean", (getter)pair_get_clean, NULL,
     "closed gracefully (both ways had ended)", NULL},
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

/* -- Engine -------------------------------------------------------------------------------- */

PyDoc_STRVAR(engine_doc,
    "Engine()\n\nOne event loop's relayed sockets, copied by a thread of the engine's own: "
    "watch fileno() with loop.add_reader and call reap() when it is readable (pairs ended); "
    "call sweep() every few seconds.");

static int close_quietly(int fd) {
    if (fd >= 0)
        close(fd);
    return -1;
}

static PyObject *engine_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, ":Engine", keywords))
        return NULL;
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    int wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;  /* the one event that is no socket */
    if (epfd < 0 || wake_fd < 0 || stop_fd < 0 ||
        epoll_ctl(epfd, EPOLL_CTL_ADD, stop_fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        close_quietly(epfd);
        close_quietly(wake_fd);
        close_quietly(stop_fd);
        return NULL;
    }
    Engine *e = (Engine *)type->tp_alloc(type, 0);
    if (e == NULL) {
        close(epfd);
        close(wake_fd);
        close(stop_fd);
        return NULL;
    }
    e->epfd = epfd;
    e->wake_fd = wake_fd;
    e->stop_fd = stop_fd;
    int err = pthread_mutex_init(&e->mu, NULL);
    if (err != 0) {
        e->closed = 1;  /* dealloc closes the descriptors */
        Py_DECREF(e);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    e->mu_ok = 1;
    return (PyObject *)e;
}

/* No thread any more (joined, or never started): reset every live conn, report (into `owners`,
   or dropping the owners if NULL) every ended one, and free every conn. -1 if appending to
   `owners` failed (everything is released all the same). */
static int release_all(Engine *e, PyObject *owners) {
    int status = 0;
    Final fins[REAP_BATCH];
    for (;;) {
        int n;
        pthread_mutex_lock(&e->mu);  /* nobody else can hold it: the thread is gone */
        while (e->live != NULL)
            end_conn(e->live, 0);
        n = take_ended(e, fins, REAP_BATCH);
        if (n == 0)
            free_dead(e, 1);
        pthread_mutex_unlock(&e->mu);
        if (n == 0)
            break;
        if (settle_all(status == 0 ? owners : NULL, fins, n) < 0)
            status = -1;
    }
    return status;
}

static void close_fds(Engine *e) {
    if (e->epfd >= 0)
        close(e->epfd);
    if (e->wake_fd >= 0)
        close(e->wake_fd);
    if (e->stop_fd >= 0)
        close(e->stop_fd);
    e->epfd = e->wake_fd = e->stop_fd = -1;
}

static int engine_traverse(Engine *e, visitproc visit, void *arg) {
    for (Pair *p = e->pairs_head; p != NULL; p = p->next)
        Py_VISIT(p);
    return 0;
}

/* Garbage (the engine, its pairs and their owners unreachable): the thread stops, the sockets
   are reset, the pairs released. Each listed pair holds a reference to the engine: the engine
   cannot be deallocated while a pair is listed, so releasing them here is what frees it. */
static int engine_clear(Engine *e) {
    if (orphaned(e) || !e->mu_ok)
        return 0;
    stop_thread(e, 0);
    release_all(e, NULL);
    return 0;
}

static void engine_dealloc(Engine *e) {
    PyObject_GC_UnTrack(e);
    /* no listed pair is left (each would hold a reference to the engine); the thread may run */
    if (!orphaned(e) && e->mu_ok) {
        stop_thread(e, 0);
        release_all(e, NULL);  /* frees the dead conns */
        pthread_mutex_destroy(&e->mu);
    }  /* else a forked child's copy: its conns are left, its descriptors closed */
    close_fds(e);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

PyDoc_STRVAR(engine_fileno_doc,
    "fileno() -> int\n\nThe descriptor that is readable when pairs ended (an eventfd), for "
    "loop.add_reader; -1 once closed.");

static PyObject *engine_fileno(Engine *e, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(e->wake_fd);
}

PyDoc_STRVAR(engine_add_doc,
    "add(client_fd, server_fd, to_server, client_eof, idle_timeout, owner) -> Pair\n\n"
    "Relay between two connected sockets, which the engine now owns (it closes them, also when "
    "this raises, unless for arguments of the wrong type). `to_server` is sent to the server "
    "first; `client_eof`: the client already shut its write side; `owner` is what reap() or "
    "sweep() report when the pair ends. A pair that ended already here (an error) is returned "
    "with `done` set and is reported by no one: the caller ends it.");

static PyObject *engine_add(Engine *e, PyObject *args) {
    int client_fd, server_fd, client_eof;
    Py_buffer to_server;
    double idle_timeout;
    PyObject *owner;
    if (!PyArg_ParseTuple(args, "iiy*pdO:add", &client_fd, &server_fd, &to_server, &client_eof,
                          &idle_timeout, &owner))
        return NULL;  /* arguments of the wrong type: the descriptors stay the caller's */
    Pair *p = NULL;
    Conn *c = NULL;
    if (e->closed) {
        PyErr_SetString(PyExc_ValueError, "the engine is closed");
        goto fail;
    }
    if (orphaned(e)) {
        PyErr_SetString(PyExc_RuntimeError, "the engine's thread is in the parent process");
        goto fail;
    }
    if (!e->started) {
        int err = start_thread(e);
        if (err != 0) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
    }
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    p = PyObject_GC_New(Pair, &PairType);
    if (p == NULL)
        goto fail;
    memset((char *)p + sizeof(PyObject), 0, sizeof(Pair) - sizeof(PyObject));
    /* the Python half, listed first: the pair may end as soon as its sockets are in the set */
    p->engine = (Engine *)Py_NewRef(e);
    p->owner = Py_NewRef(owner);
    p->conn = c;
    p->next = e->pairs_head;
    if (p->next != NULL)
        p->next->prev = p;
    e->pairs_head = p;
    Py_INCREF(p);  /* the engine's reference, while listed */
    PyObject_GC_Track(p);
    /* the C half */
    c->engine = e;
    c->pair = p;
    c->sock[0] = (Sock){c, client_fd, 0};
    c->sock[1] = (Sock){c, server_fd, 0};
    c->idle_timeout = idle_timeout;
    c->quiet_since = monotonic();
    Final fin;
    int ended = 0;
    LOCKED(e, {
        push_conn(c, LIVE);
        int step = 0;
        if (to_server.len > 0)
            step = send_way(c, 0, to_server.buf, (size_t)to_server.len);
        if (step == 0 && client_eof) {
            c->way[0].eof = 1;
            if (c->way[0].pending_len == 0)
                shut_way(c, 0);
        }
        settle(c);
        if (c->done) {  /* ended already: the caller reports it (pair.done) */
            take_final(c, &fin);
            ended = 1;
        }
    });
    PyBuffer_Release(&to_server);
    if (ended)
        Py_DECREF(settle_pair(&fin));
    return (PyObject *)p;

fail:
    PyBuffer_Release(&to_server);
    close(client_fd);
    close(server_fd);
    free(c);
    return NULL;
}

PyDoc_STRVAR(engine_reap_doc,
    "reap() -> list | tuple\n\nThe owners of the pairs that ended since the last call (each "
    "reported once), or () when none did; clears fileno()'s readiness.");

static PyObject *engine_reap(Engine *e, PyObject *Py_UNUSED(ignored)) {
    if (e->closed || orphaned(e))
        return PyTuple_New(0);
    uint64_t count;
    while (read(e->wake_fd, &count, sizeof count) < 0 && errno == EINTR) {
    }
    Final fins[REAP_BATCH];
    int n;
    LOCKED(e, {
        e->signalled = 0;
        n = take_ended(e, fins, REAP_BATCH);
    });
    if (n == 0)
        return PyTuple_New(0);  /* the shared empty tuple: no allocation */
    PyObject *owners = PyList_New(0);
    if (owners == NULL) {
        settle_all(NULL, fins, n);  /* taken: they cannot go back (no memory anyway) */
        return NULL;
    }
    if (settle_all(owners, fins, n) < 0) {
        Py_DECREF(owners);
        return NULL;
    }
    if (n == REAP_BATCH) {  /* more: the rest now too */
        PyObject *rest = reap_all(e);
        if (rest == NULL) {
            Py_DECREF(owners);
            return NULL;
        }
        Py_ssize_t size = PyList_GET_SIZE(owners);
        int failed = PyList_SetSlice(owners, size, size, rest);
        Py_DECREF(rest);
        if (failed < 0) {
            Py_DECREF(owners);
            return NULL;
        }
    }
    return owners;
}

PyDoc_STRVAR(engine_sweep_doc,
    "sweep() -> (moved, ended)\n\nThe idle timeout and the byte counters: close the pairs that "
    "moved no byte for their idle_timeout (graceful unless something is pending); `moved`: "
    "the owners of the pairs that moved bytes since the last sweep (for Pair.take()); "
    "`ended`: the owners of the pairs that ended.");

static PyObject *engine_sweep(Engine *e, PyObject *Py_UNUSED(ignored)) {
    PyObject *moved = PyList_New(0);
    if (moved == NULL)
        return NULL;
    if (!e->closed && !orphaned(e)) {
        /* the pairs that moved, as a C array under the mutex (no Python call there): how many
           there can be is the live count, read (and the array made) before locking */
        Py_ssize_t room;
        LOCKED(e, room = e->count);
        Pair **pairs = PyMem_Malloc(sizeof(Pair *) * (size_t)(room > 0 ? room : 1));
        if (pairs == NULL) {
            Py_DECREF(moved);
            return PyErr_NoMemory();
        }
        Py_ssize_t n = 0;
        double now = monotonic();
        LOCKED(e, {
            Conn *next;
            for (Conn *c = e->live; c != NULL; c = next) {
                next = c->next;  /* c may move to the ended list */
                uint64_t total = c->way[0].bytes + c->way[1].bytes;
                if (total != c->swept) {
                    c->swept = total;
                    c->quiet_since = now;
                    if (n < room)  /* more live than counted: the rest at the next sweep */
                        pairs[n++] = (Pair *)c->pair;
                } else if (c->idle_timeout > 0 && now - c->quiet_since >= c->idle_timeout) {
                    end_conn(c, c->way[0].pending_len == 0 && c->way[1].pending_len == 0);
                }
            }
        });
        /* still listed (only Python, with the GIL, reports them), so still alive */
        for (Py_ssize_t k = 0; k < n; k++) {
            PyObject *owner = pairs[k]->owner;
            if (owner != NULL && PyList_Append(moved, owner) < 0) {
                PyMem_Free(pairs);
                Py_DECREF(moved);
                return NULL;
            }
        }
        PyMem_Free(pairs);
    }
    PyObject *ended = e->closed || orphaned(e) ? PyList_New(0) : reap_all(e);
    if (ended == NULL) {
        Py_DECREF(moved);
        return NULL;
    }
    return Py_BuildValue("(NN)", moved, ended);
}

PyDoc_STRVAR(engine_close_doc,
    "close() -> list\n\nStop the thread, reset every pair and close the descriptors; the owners "
    "of the pairs that ended (not yet reported).");

static PyObject *engine_close(Engine *e, PyObject *Py_UNUSED(ignored)) {
    PyObject *owners = PyList_New(0);
    if (owners == NULL)
        return NULL;
    if (e->closed)
        return owners;
    e->closed = 1;
    if (orphaned(e)) {
        close_fds(e);
        return owners;
    }
    stop_thread(e, 1);
    if (release_all(e, owners) < 0) {
        Py_DECREF(owners);
        owners = NULL;
    }
    close_fds(e);
    return owners;
}

static PyObject *engine_get_pairs(Engine *e, void *Py_UNUSED(closure)) {
    Py_ssize_t n;
    if (e->closed || orphaned(e))
        return PyLong_FromLong(0);
    LOCKED(e, n = e->count);
    return PyLong_FromSsize_t(n);
}

static PyObject *engine_get_closed(Engine *e, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(e->closed);
}

static PyObject *engine_get_running(Engine *e, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(e->started);
}

static PyMethodDef engine_methods[] = {
    {"fileno", (PyCFunction)engine_fileno, METH_NOARGS, engine_fileno_doc},
    {"add", (PyCFunction)engine_add, METH_VARARGS, engine_add_doc},
    {"reap", (PyCFunction)engine_reap, METH_NOARGS, engine_reap_doc},
    {"sweep", (PyCFunction)engine_sweep, METH_NOARGS, engine_sweep_doc},
    {"close", (PyCFunction)engine_close, METH_NOARGS, engine_close_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef engine_getset[] = {
    {"pairs", (getter)engine_get_pairs, NULL, "live pairs", NULL},
    {"closed", (getter)engine_get_closed, NULL, "close() was called", NULL},
    {"running", (getter)engine_get_running, NULL, "the copying thread runs", NULL},
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

/* -- module -------------------------------------------------------------------------------- */

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "portico.proxy._relay",
    .m_doc = "The TCP relay's byte copy in C, on a thread (see the comment at the top of "
             "_relay.c).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__relay(void) {
    static int registered;
    if (!registered) {
        if (pthread_atfork(NULL, NULL, count_fork) != 0) {
            PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
            return NULL;
        }
        registered = 1;
    }
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
