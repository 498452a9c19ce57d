import Foundation

/// Test-only fault injection, so the multi-rank tests can prove that failures are caught.
/// Set RNN_DP_FAULT=KIND:RANK:STEP; it acts on that rank after the update of that step.
///   perturb  adds 1e-3 to one parameter (the replicas drift apart; the checksum must catch it)
///   throw    throws an error on that rank only (the whole job must end, naming the rank)
///   nan      puts a NaN into that rank's gradient before the allreduce (every rank sees it after)
///   hang     that rank stops before the gradient allreduce and never returns (the others' watchdog must end the job)
/// Unset in normal use; an unparsable value is ignored with a warning.
struct FaultInjection {
    enum Kind: String { case perturb, `throw`, nan, hang }
    let kind: Kind
    let rank: Int
    let step: Int

    static func fromEnvironment() -> FaultInjection? {
        guard let v = ProcessInfo.processInfo.environment["RNN_DP_FAULT"], !v.isEmpty else { return nil }
        let parts = v.split(separator: ":")
        guard parts.count == 3, let kind = Kind(rawValue: String(parts[0])), let rank = Int(parts[1]), let step = Int(parts[2]) else {
            FileHandle.standardError.write(Data("rnn-dp: warning: ignoring RNN_DP_FAULT=\(v) (expected perturb|throw|nan|hang:RANK:STEP)\n".utf8))
            return nil
        }
        return FaultInjection(kind: kind, rank: rank, step: step)
    }
}
