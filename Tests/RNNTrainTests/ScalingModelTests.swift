import XCTest
@testable import RNNTrain

final class ScalingModelTests: XCTestCase {
    /// A hand-computed case: alpha = 2 us, beta = 0.5 ns/B (2 GB/s), 8 MiB on 4 ranks:
    /// T = 2*3*2e-6 + 2*(3/4)*8388608*0.5e-9 = 1.2e-5 + 6.291456e-3 = 6.303456e-3 s.
    func testRingAllreduceTimeByHand() {
        let m = AllreduceModel(alpha: 2e-6, beta: 0.5e-9)
        XCTAssertEqual(m.time(bytes: 8_388_608, ranks: 4), 6.303456e-3, accuracy: 1e-12)
        XCTAssertEqual(m.time(bytes: 1000, ranks: 1), 0)
        // Weak scaling: 100 ms of compute, no overlap: efficiency 0.1 / (0.1 + T).
        let (step, eff) = m.project(compute: 0.1, bytes: 8_388_608, ranks: 4)
        XCTAssertEqual(step, 0.1 + 6.303456e-3, accuracy: 1e-12)
        XCTAssertEqual(eff, 0.1 / (0.1 + 6.303456e-3), accuracy: 1e-12)
        // Full overlap hides communication shorter than the compute.
        XCTAssertEqual(m.project(compute: 0.1, bytes: 8_388_608, ranks: 4, overlap: 1).efficiency, 1)
    }

    func testFitRecoversTheModel() {
        let truth = AllreduceModel(alpha: 3e-6, beta: 0.25e-9)
        let points = [4.0, 4096, 1_048_576, 16_777_216].map { (bytes: $0, seconds: truth.time(bytes: $0, ranks: 3)) }
        let fit = AllreduceModel.fit(points, ranks: 3)!
        XCTAssertEqual(fit.alpha, truth.alpha, accuracy: 1e-15)
        XCTAssertEqual(fit.beta, truth.beta, accuracy: 1e-18)
        XCTAssertNil(AllreduceModel.fit(points, ranks: 1))
    }
}
