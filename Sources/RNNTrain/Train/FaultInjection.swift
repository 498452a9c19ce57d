import Foundation
import RNN

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

extension FaultInjection {
    /// Whether the reducer must not overlap the backward pass at `step` (every rank alike): the
    /// injected NaN enters the gradients after the pass, and the buffer must not change under a
    /// running reduction.
    func suspendsOverlap(step: Int) -> Bool { kind == .nan && self.step == step }

    /// On the faulty rank, just before its gradient is reduced: the NaN, or the hang.
    func beforeReduction(step: Int, rank: Int, gradients: Buffer<Float>) {
        guard rank == self.rank, step == self.step else { return }
        if kind == .nan { gradients[0] = .nan }
        if kind == .hang { while true { sleep(60) } }
    }

    /// On the faulty rank, after the update: the drift, or the error.
    func afterUpdate(step: Int, rank: Int, parameters: Buffer<Float>) throws {
        guard rank == self.rank, step == self.step else { return }
        switch kind {
        case .perturb: parameters[0] += 1e-3
        case .throw: throw RNNDPError("injected failure at step \(step) (RNN_DP_FAULT)", exitCode: RNNDPError.runtimeFailure)
        case .nan, .hang: break
        }
    }
}
