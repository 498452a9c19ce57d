import XCTest
import RNNDistributed

final class CompressionTests: XCTestCase {
    func testBFloat16RoundsToNearestEven() {
        XCTAssertEqual(Compression.toBF16(1), 0x3F80)
        XCTAssertEqual(Compression.fromBF16(0x3F80), 1)
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even one (1).
        XCTAssertEqual(Compression.toBF16(1 + 0x1p-8), 0x3F80)
        XCTAssertEqual(Compression.toBF16(1 + 0x1p-8 + 0x1p-12), 0x3F81)
        XCTAssertTrue(Compression.fromBF16(Compression.toBF16(.nan)).isNaN)
        XCTAssertEqual(Compression.fromBF16(Compression.toBF16(.infinity)), .infinity)
        for x: Float in [0.1, -3.7, 1e-20, 6.5e4] {
            let y = Compression.fromBF16(Compression.toBF16(x))
            XCTAssertEqual(y, x, accuracy: abs(x) * 0x1p-8)
        }
    }
}
