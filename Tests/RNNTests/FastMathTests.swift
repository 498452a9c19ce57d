import XCTest
@testable import RNN

/// FastMath against the correctly rounded Double results, in float32 ulps.
final class FastMathTests: XCTestCase {
    func ulps(_ got: Float, _ exact: Double) -> Double {
        let e = Float(exact)
        if got == e { return 0 }
        let ulp = Double(e.ulp == 0 ? Float.leastNonzeroMagnitude : e.ulp)
        return abs(Double(got) - exact) / ulp
    }

    /// A dense sweep plus special points; worst error in ulps.
    func worst(_ f: (Float) -> Float, _ g: (Double) -> Double, from lo: Float, to hi: Float, minMagnitude: Double = 0) -> (Double, Float) {
        var w = 0.0, at: Float = 0
        var x = lo
        let step = (hi - lo) / 400_000
        while x <= hi {
            let exact = g(Double(x))
            if abs(exact) >= minMagnitude {
                let u = ulps(f(x), exact)
                if u > w { w = u; at = x }
            }
            x += step
        }
        return (w, at)
    }

    func testExpWithinTwoUlps() {
        let (w, at) = worst(FastMath.exp, Foundation.exp, from: -87, to: 88)
        XCTAssertLessThanOrEqual(w, 2, "at \(at)")
        XCTAssertEqual(FastMath.exp(0), 1)
        XCTAssertEqual(FastMath.exp(-200), 0)
        XCTAssertTrue(FastMath.exp(.nan).isNaN)
        XCTAssertTrue(FastMath.exp(100).isFinite || FastMath.exp(100) == .infinity)
    }

    func testTanhWithinThreeUlps() {
        let (w, at) = worst(FastMath.tanh, Foundation.tanh, from: -12, to: 12, minMagnitude: 1e-30)
        XCTAssertLessThanOrEqual(w, 3, "at \(at)")
        let (ws, ats) = worst(FastMath.tanh, Foundation.tanh, from: -1e-3, to: 1e-3, minMagnitude: 1e-30)
        XCTAssertLessThanOrEqual(ws, 2, "small arguments, at \(ats)")
        XCTAssertEqual(FastMath.tanh(50), 1)
        XCTAssertEqual(FastMath.tanh(-50), -1)
        XCTAssertEqual(FastMath.tanh(0), 0)
        XCTAssertTrue(FastMath.tanh(.nan).isNaN)
    }

    func testSigmoidWithinThreeUlps() {
        let (w, at) = worst(FastMath.sigmoid, { 1 / (1 + Foundation.exp(-$0)) }, from: -80, to: 30, minMagnitude: 1e-30)
        XCTAssertLessThanOrEqual(w, 3, "at \(at)")
        XCTAssertTrue(FastMath.sigmoid(.nan).isNaN)
        XCTAssertEqual(FastMath.sigmoid(100), 1)
    }
}
