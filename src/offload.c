/*
 * offload.c: one helper thread and a queue (offload.h says what for).
 *
 * The thread takes jobs from `queue` and, once one has run, puts it on `finished` and writes
 * the eventfd; the loop's event takes everything on `finished` and calls each done in order.
 * Everything the two share is under `mu`. The struct is freed by whichever lets go last: the
 * loop in offload_free, or the thread when it was left running a job past the wait (refs).
 */
#include "offload.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/crypto.h>

#include "util.h"

#define STACK_SIZE (512u * 1024u) /* the jobs parse bounded JSON: no deep recursion */

struct job_list {
	struct offload_job *head, *tail;
};

struct offload {
	pthread_mutex_t mu;
	pthread_cond_t wake;    /* the thread: a job was queued, or stop */
	pthread_cond_t settled; /* offload_free: the running job finished */
	struct job_list queue, finished;
	struct offload_job *running;
	size_t n_pending; /* queued + running + finished not yet done (the loop's count) */
	bool stop;
	int refs; /* the loop's and the thread's */
	pthread_t tid;
	int efd;
	struct event *ev;
};

static void list_push(struct job_list *l, struct offload_job *j)
{
	j->next = NULL;
	if (l->tail)
		l->tail->next = j;
	else
		l->head = j;
	l->tail = j;
}

static struct offload_job *list_take_all(struct job_list *l)
{
	struct offload_job *all = l->head;

	l->head = l->tail = NULL;
	return all;
}

static void unref_locked_and_unlock(struct offload *ow)
{
	bool last = --ow->refs == 0;

	pthread_mutex_unlock(&ow->mu);
	if (last) {
		pthread_cond_destroy(&ow->wake);
		pthread_cond_destroy(&ow->settled);
		pthread_mutex_destroy(&ow->mu);
		if (ow->efd >= 0)
			close(ow->efd);
		free(ow);
	}
}

static void *helper(void *arg)
{
	struct offload *ow = arg;

	pthread_mutex_lock(&ow->mu);
	for (;;) {
		while (!ow->stop && !ow->queue.head)
			pthread_cond_wait(&ow->wake, &ow->mu);
		if (ow->stop)
			break;
		struct offload_job *j = ow->queue.head;
		ow->queue.head = j->next;
		if (!ow->queue.head)
			ow->queue.tail = NULL;
		ow->running = j;
		pthread_mutex_unlock(&ow->mu);
		j->run(j);
		pthread_mutex_lock(&ow->mu);
		ow->running = NULL;
		list_push(&ow->finished, j);
		pthread_cond_signal(&ow->settled);
		if (!ow->stop) {
			uint64_t one = 1;
			ssize_t n = write(ow->efd, &one, sizeof(one));
			(void)n; /* a counter already above zero wakes the loop all the same */
		}
	}
	pthread_mutex_unlock(&ow->mu);
	/* The jobs used OpenSSL (the store's cipher): free its state for this thread now, not in
	 * a key destructor that may run after the process has begun to exit. */
	OPENSSL_thread_stop();
	pthread_mutex_lock(&ow->mu);
	unref_locked_and_unlock(ow);
	return NULL;
}

/* The loop: every finished job's done, in order. A done may submit more. */
static void on_finished(evutil_socket_t fd, short what, void *arg)
{
	struct offload *ow = arg;
	uint64_t n;

	UNUSED(what);
	if (read(fd, &n, sizeof(n)) < 0) {
		/* EAGAIN: a wake-up already taken; the list says what is there */
	}
	pthread_mutex_lock(&ow->mu);
	struct offload_job *j = list_take_all(&ow->finished);
	pthread_mutex_unlock(&ow->mu);
	while (j) {
		struct offload_job *next = j->next;
		ow->n_pending--;
		j->done(j, true, false);
		j = next;
	}
}

struct offload *offload_new(struct event_base *base, char *err, size_t err_len)
{
	struct offload *ow = calloc(1, sizeof(*ow));
	pthread_attr_t attr;
	sigset_t all, old;
	int rc;

	if (!ow) {
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	ow->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (ow->efd < 0) {
		snprintf(err, err_len, "eventfd: %s", strerror(errno));
		free(ow);
		return NULL;
	}
	ow->ev = event_new(base, ow->efd, EV_READ | EV_PERSIST, on_finished, ow);
	if (!ow->ev || event_add(ow->ev, NULL) < 0) {
		snprintf(err, err_len, "out of memory");
		if (ow->ev)
			event_free(ow->ev);
		close(ow->efd);
		free(ow);
		return NULL;
	}
	pthread_mutex_init(&ow->mu, NULL);
	pthread_cond_init(&ow->wake, NULL);
	pthread_cond_init(&ow->settled, NULL);
	ow->refs = 2;
	/* The thread takes no signal: the loop handles them. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, STACK_SIZE);
	rc = pthread_create(&ow->tid, &attr, helper, ow);
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		snprintf(err, err_len, "cannot start a helper thread: %s", strerror(rc));
		event_free(ow->ev);
		pthread_cond_destroy(&ow->wake);
		pthread_cond_destroy(&ow->settled);
		pthread_mutex_destroy(&ow->mu);
		close(ow->efd);
		free(ow);
		return NULL;
	}
	return ow;
}

void offload_submit(struct offload *ow, struct offload_job *j)
{
	pthread_mutex_lock(&ow->mu);
	list_push(&ow->queue, j);
	ow->n_pending++;
	pthread_cond_signal(&ow->wake);
	pthread_mutex_unlock(&ow->mu);
}

size_t offload_pending(const struct offload *ow)
{
	return ow ? ow->n_pending : 0;
}

int offload_free(struct offload *ow, int wait_ms)
{
	struct offload_job *queued, *finished, *next;
	struct timespec until;
	int left = 0;

	if (!ow)
		return 0;
	event_free(ow->ev);
	ow->ev = NULL;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += wait_ms / 1000;
	until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&ow->mu);
	/* What is queued still runs, until the time is up: a write of new tokens waiting behind a
	 * read must land, not be dropped at exit. */
	while (ow->running || ow->queue.head) {
		if (pthread_cond_timedwait(&ow->settled, &ow->mu, &until) == ETIMEDOUT)
			break;
	}
	ow->stop = true;
	pthread_cond_signal(&ow->wake);
	queued = list_take_all(&ow->queue);
	if (ow->running)
		left = 1; /* its done never runs: the thread drops it when it returns */
	finished = list_take_all(&ow->finished);
	ow->n_pending = 0;
	pthread_t tid = ow->tid;
	unref_locked_and_unlock(ow); /* ow is gone once the thread has let go too */
	if (left)
		pthread_detach(tid); /* stuck in its job: it frees ow when (if) it returns */
	else
		pthread_join(tid, NULL); /* it is about to exit: nothing of it outlives this call */
	for (; finished; finished = next) {
		next = finished->next;
		finished->done(finished, true, true);
	}
	for (; queued; queued = next) {
		next = queued->next;
		queued->done(queued, false, true);
	}
	return left;
}
