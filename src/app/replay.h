/* replay: `chatgw replay --stable DIR --candidate DIR [--max-diff-rate X] [--examples N]
 * [--key value ...] FILE`. Runs the hook inputs recorded in FILE (policy_record_file, JSON
 * lines) through the stable and the candidate policy offline, in the same sandbox and under
 * the same time guard as the server (shadow mode: the candidate's effects recorded, compared,
 * never performed), with gw.now, JWT expiry and the gw.store/gw.limit clock taken from each
 * record's ts, so a replay of one file always gives the same answer. gw.members and gw.rooms
 * answer from the joins and leaves the records hold; gw.send, gw.broadcast and gw.kick reach
 * nobody (they are compared, as in shadow mode). Prints a summary of the
 * disagreements by hook and kind with examples (strings cut short) to stdout. Exit status: 0
 * when the share of calls with a disagreement is at most --max-diff-rate (default 0), 1 above
 * it, 2 for bad usage, a policy that does not load, or a file that cannot be read. */
#ifndef CHATGW_REPLAY_H
#define CHATGW_REPLAY_H

/* argv: the arguments after "replay". Returns the exit status. */
int replay_main(int argc, char **argv);

#endif
