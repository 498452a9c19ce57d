import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// SIGTERM, SIGINT and SIGUSR1 (the signals schedulers send before preempting a job or at its
/// wall-time limit) only set a flag here; the training loop reads it at the next step boundary,
/// every rank learns it through a collective, and the job checkpoints and exits with
/// `Signals.resumeExitCode`.
public enum Signals {
    /// EX_TEMPFAIL from sysexits.h: "checkpointed; run again with --resume to continue".
    public static let resumeExitCode: Int32 = 75
    public static let handled = [SIGTERM, SIGINT, SIGUSR1]

    public static func install() {
        _ = signalFlag.pointee  // initialize the global now, never inside a handler
        for s in handled { signal(s) { received in signalFlag.pointee = received } }
    }

    /// The signal received since `install` (0: none).
    public static var received: Int32 { signalFlag.pointee }

    public static func name(_ s: Int32) -> String {
        switch s {
        case SIGTERM: return "SIGTERM"
        case SIGINT: return "SIGINT"
        case SIGUSR1: return "SIGUSR1"
        default: return "signal \(s)"
        }
    }
}

/// Written only by the signal handler, read by the training loop (a sig_atomic_t's worth).
private let signalFlag: UnsafeMutablePointer<sig_atomic_t> = {
    let p = UnsafeMutablePointer<sig_atomic_t>.allocate(capacity: 1)
    p.initialize(to: 0)
    return p
}()
