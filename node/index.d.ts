import expressSession, { Store, SessionData } from "express-session";

interface EvanesceStoreOptions {
	/**
	 * How often (ms) a background thread of the native store sweeps expired sessions.
	 * Expired sessions are reclaimed by the store's writes anyway; the sweeper covers a
	 * store nobody writes to (and delivers `dispose` for expiries without any request).
	 * 0 or Infinity: no sweeper. Disabled by default.
	 */
	checkPeriod?: number;
	/**
	 * The most sessions held; beyond it the least valuable (created and never read again
	 * first) are evicted. 0 or Infinity: no limit (the default).
	 */
	max?: number;
	/**
	 * The most bytes held, counting each session's id plus its serialized value. A
	 * session larger than this is refused (set fails). Exclusive with `max`.
	 */
	maxBytes?: number;
	/**
	 * Session TTL in milliseconds, or a function `(options, sess, sessionId) => ms`
	 * (called on the JS thread). Defaults to `sess.cookie.maxAge` (else the cookie's
	 * `expires`), or one day. A TTL of zero or less on `set` removes the session.
	 */
	ttl?: number | ((options: EvanesceStoreOptions, sess: SessionData, sessionId: string) => number);
	/**
	 * Called once for every session that leaves the store, with its id, its stored
	 * (serialized) value and why: `"expired"`, `"evicted"`, `"destroyed"`, `"replaced"`
	 * or `"cleared"`. Always on the JS thread, after the session is gone: synchronously
	 * inside the store call that removed it, or (removals by the store's own threads)
	 * on a later turn of the event loop.
	 */
	dispose?: (key: string, value: string | Buffer | undefined, cause: "expired" | "evicted" | "destroyed" | "replaced" | "cleared") => void;
	/**
	 * An expired session not reclaimed yet is returned once more by `get` (then removed).
	 * The store reclaims expired sessions within about a millisecond, so this rarely
	 * matters.
	 */
	stale?: boolean;
	/** `set` over an existing session does not call `dispose`. */
	noDisposeOnSet?: boolean;
	/**
	 * An object compatible with JavaScript's JSON to override the serializer used;
	 * `stringify` may return a string or a Buffer.
	 */
	serializer?: {
		stringify: (arg: object) => string | Buffer | Uint8Array;
		parse: (str: any) => object;
	};
	/**
	 * Sessions survive restarts: loaded from this file when the store is created (a damaged
	 * file makes the constructor throw), saved by `close()` and when the process exits.
	 */
	snapshotFile?: string;
	/**
	 * Stores created with the same name in any worker_threads of the process share one
	 * native store (their `max`, `maxBytes`, `checkPeriod`, `stale`, `noDisposeOnSet` and
	 * `snapshotFile` must agree).
	 */
	name?: string;
}

/** The native store's counters. */
interface EvanesceStoreStats {
	hits: number;
	misses: number;
	inserts: number;
	removals: number;
	evictions: number;
	expirations: number;
}

declare class EvanesceStore extends Store {
	constructor(options?: EvanesceStoreOptions);
	options: EvanesceStoreOptions;
	get(sid: string, callback: (err: any, session?: SessionData | null) => void): void;
	set(sid: string, session: SessionData, callback?: (err?: any) => void): void;
	destroy(sid: string | string[], callback?: (err?: any) => void): void;
	touch(sid: string, session: SessionData, callback?: (err?: any) => void): void;
	all(callback: (err: any, obj?: { [sid: string]: SessionData } | null) => void): void;
	length(callback: (err: any, length?: number) => void): void;
	clear(callback?: (err?: any) => void): void;
	/** The ids of the live sessions, latest written first. */
	ids(callback: (err: any, ids?: string[]) => void): void;
	/** (Re)start the native sweeper with the `checkPeriod` option. */
	startInterval(): void;
	/** Stop the native sweeper. */
	stopInterval(): void;
	/** Remove the expired sessions now, off the event loop. */
	prune(callback?: (err?: any) => void): void;
	/** The native store's counters. */
	stats(): EvanesceStoreStats;
	/** Save a snapshot to `path` (default: the `snapshotFile` option), off the event loop. */
	saveSnapshot(callback?: (err: any, saved?: number) => void): void;
	saveSnapshot(path: string, callback?: (err: any, saved?: number) => void): void;
	/**
	 * Save the snapshot (with `snapshotFile`) and let go of the native store; later calls
	 * fail with code ERR_EVANESCE_CLOSED.
	 */
	close(callback?: (err: any, saved?: number) => void): void;
}

/**
 * Sample usage:
 * ```
 * import session from 'express-session';
 * import createEvanesceStore from 'evanesce-session';
 * const EvanesceStore = createEvanesceStore(session);
 * ...
 * app.use(session({ store: new EvanesceStore({ checkPeriod: 86400000 }), secret: '...' }));
 * ```
 */
declare function createEvanesceStore(
	session: typeof expressSession | { Store: typeof Store }
): typeof EvanesceStore;
export = createEvanesceStore;
