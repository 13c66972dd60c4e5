/* crash: a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) leaves a small crash record
 * in crash_dir, and the next start turns each record into an error-tracker event.
 *
 * Contract:
 * - The handler uses async-signal-safe calls only (open, write, close, clock_gettime, getpid,
 *   prctl, backtrace_symbols_fd once backtrace was primed at install, raise): it writes the
 *   signal, the time, the version, the policy version last noted and the backtrace, then lets
 *   the signal take the process down as it would have (exit status, core dump).
 * - crash_install is called once on the main thread before any other thread starts; it runs
 *   the handler on an alternate stack there, so a stack overflow of the main loop is recorded.
 * - crash_policy_note may be called from any thread; the record holds the last value noted.
 * - Records are text files "crash-<unix time>-<pid>.txt" (the format is this file's own);
 *   crash_records_each reads at most CRASH_RECORDS_MAX of them, newest first, and deletes the
 *   rest. */
#ifndef CHATGW_CRASH_H
#define CHATGW_CRASH_H

#include <jansson.h>
#include <stddef.h>

#define CRASH_RECORDS_MAX 16
#define CRASH_RECORD_MAX_BYTES 65536

/* 0, or GW_EINVAL with err when dir is not a writable directory. dir "" installs nothing. */
int crash_install(const char *dir, char *err, size_t errlen);

void crash_policy_note(const char *version);

/* The record's event for an error tracker (level fatal, the signal as the exception, the
 * backtrace as frames, release and timestamp of the crashed process), or NULL when text is not
 * a crash record. No I/O. */
json_t *crash_record_event(const char *text, size_t len);

/* Calls fn with each record's path and event (fn takes the event); unreadable or malformed
 * records are deleted. Returns how many records fn got. */
int crash_records_each(const char *dir, void (*fn)(void *ud, const char *path, json_t *event), void *ud);

#endif
