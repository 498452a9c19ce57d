import Foundation

/// The margin of a learning or tolerance test: how far its measured value sits from the bound it
/// is asserted against, printed as one `margin:` line so that `scripts/test.sh` can list the
/// smallest margin of a run (and of a run under a second BLAS kernel; docs/REPRODUCIBILITY.md).
///
/// The margin is relative to the bound: (bound - value) / bound for an upper bound, and
/// (value - bound) / bound for a lower bound. It is negative when the assertion fails.
public enum Margin {
    public enum Side: String { case below, above }

    @discardableResult
    public static func report(_ test: String, _ what: String, value: Double, must side: Side, bound: Double) -> Double {
        let margin = side == .below ? (bound - value) / abs(bound) : (value - bound) / abs(bound)
        let kernel = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "default"
        print("margin: \(test) \(what) value=\(value) must be \(side.rawValue) \(bound) margin=\(String(format: "%.1f", 100 * margin))% kernel=\(kernel)")
        return margin
    }
}
