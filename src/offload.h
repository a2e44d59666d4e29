/*
 * offload.h: blocking work (reading, encoding and writing a large file, waiting for its lock)
 * done on a helper thread, so that the event loop never waits for it; what follows it runs on
 * the loop.
 *
 * One helper thread per struct offload. Jobs run one at a time, in the order submitted (jobs on
 * one file keep their order), and each job's done runs on the loop, in the same order, exactly
 * once: after its run, or from offload_free. run must not touch anything the loop owns: a job
 * carries copies in and results out, and the loop reads them in done.
 */
#ifndef GHLPROXY_OFFLOAD_H
#define GHLPROXY_OFFLOAD_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct offload;

struct offload_job {
	void (*run)(struct offload_job *j); /* on the helper thread */
	/* On the loop. ran: run has returned (false: it never started). stopping: called from
	 * offload_free, whose caller is going away; clean up, do not go on. */
	void (*done)(struct offload_job *j, bool ran, bool stopping);
	struct offload_job *next; /* the queue's: not for the caller */
};

/* The thread (its signals blocked) and the loop's end of it. NULL with err set on failure. */
struct offload *offload_new(struct event_base *base, char *err, size_t err_len);

/* Queue j (owned by the caller until its done returns). */
void offload_submit(struct offload *ow, struct offload_job *j);

/* Jobs queued or running. */
size_t offload_pending(const struct offload *ow);

/*
 * Stop: the queue keeps running for up to wait_ms (a write queued behind a read still lands);
 * then every job that ran is done (ran true, stopping true), then every job that did not start
 * (ran false, stopping true), each in order. A job still running when wait_ms is up (a lock held
 * elsewhere for ever) is left to the thread, which then exits without calling its done: the
 * return value counts it (0 or 1). NULL: nothing.
 */
int offload_free(struct offload *ow, int wait_ms);

#endif
