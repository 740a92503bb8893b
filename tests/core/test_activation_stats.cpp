// Activation statistics against direct recomputation on the captured matrix.
#include <QtTest>

#include <cmath>
#include <random>

#include "calib/activation_stats.h"

using namespace ql;

namespace {

std::vector<float> heavyTailed(std::int64_t tokens, int channels, unsigned seed)
{
    std::mt19937 rng(seed);
    std::student_t_distribution<float> t(3.0f);
    std::vector<float> x(tokens * channels);
    for (std::int64_t i = 0; i < tokens; ++i)
        for (int j = 0; j < channels; ++j)
            x[i * channels + j] = t(rng) * (j % 17 == 3 ? 20.0f : 1.0f);
    return x;
}

}  // namespace

class TestActivationStats : public QObject {
    Q_OBJECT
private slots:
    void matchesDirectRecomputation_data()
    {
        QTest::addColumn<int>("precision");
        QTest::newRow("f32") << int(HessianPrecision::Float32);
        QTest::newRow("f64") << int(HessianPrecision::Float64);
    }
    void matchesDirectRecomputation()
    {
        QFETCH(int, precision);
        const int c = 48;
        const std::int64_t t = 300;
        auto x = heavyTailed(t, c, 7);
        ActivationStats s(c, HessianPrecision(precision), 1024, 8);
        s.add(std::span(x).first(100 * c), 100, 0);
        s.add(std::span(x).subspan(100 * c), 200, 1);
        QCOMPARE(s.tokenCount(), t);
        QCOMPARE(s.histogram().total(), std::uint64_t(t * c));
        auto h = s.hessian();
        auto meanAbs = s.channelMeanAbs();
        for (int a = 0; a < c; ++a) {
            float mx = 0;
            double sa = 0;
            for (std::int64_t i = 0; i < t; ++i) {
                mx = std::max(mx, std::fabs(x[i * c + a]));
                sa += std::fabs(x[i * c + a]);
            }
            QCOMPARE(s.channelAbsMax()[a], mx);
            QVERIFY(std::fabs(meanAbs[a] - sa / t) <= 1e-12 * (sa / t));
            for (int b = 0; b < c; ++b) {
                double ref = 0;
                for (std::int64_t i = 0; i < t; ++i) ref += double(x[i * c + a]) * x[i * c + b];
                const double tol = precision == int(HessianPrecision::Float64) ? 1e-12 : 1e-5;
                double scale = std::sqrt(h[a * c + a] * h[b * c + b]);
                QVERIFY2(
                    std::fabs(h[a * c + b] - ref) <= tol * scale,
                    qPrintable(
                        QString("H[%1,%2]=%3 ref %4").arg(a).arg(b).arg(h[a * c + b]).arg(ref)));
            }
        }
        // Top activations are the largest |x| overall, with their positions.
        std::vector<float> all(x.begin(), x.end());
        std::sort(all.begin(), all.end(),
                  [](float p, float q) { return std::fabs(p) > std::fabs(q); });
        QCOMPARE(int(s.top().size()), 8);
        for (int i = 0; i < 8; ++i) {
            const auto& top = s.top()[i];
            QCOMPARE(std::fabs(top.value), std::fabs(all[i]));
            std::int64_t row = (top.sample == 0 ? 0 : 100) + top.position;
            QCOMPARE(x[row * c + top.channel], top.value);
        }
    }

    void mergeEqualsSinglePass()
    {
        const int c = 16;
        auto x = heavyTailed(500, c, 3);
        ActivationStats one(c, HessianPrecision::Float64, 512, 4),
            a(c, HessianPrecision::Float64, 512, 4), b(c, HessianPrecision::Float64, 512, 4);
        one.add(x, 500, 0);
        a.add(std::span(x).first(10 * c), 10, 0);  // small first batch: smaller range, merged up
        b.add(std::span(x).subspan(10 * c), 490, 0, 10);
        QVERIFY(a.merge(b).ok());
        QCOMPARE(a.histogram().range, one.histogram().range);
        QCOMPARE(a.histogram().counts, one.histogram().counts);
        QCOMPARE(a.channelAbsMax(), one.channelAbsMax());
        QCOMPARE(a.tokenCount(), one.tokenCount());
        auto ha = a.hessian(), h1 = one.hessian();
        for (std::size_t i = 0; i < ha.size(); ++i)
            QVERIFY(std::fabs(ha[i] - h1[i]) <= 1e-9 * (1 + std::fabs(h1[i])));
        ActivationStats other(c + 1, HessianPrecision::Float64);
        QVERIFY(!a.merge(other).ok());
    }

    void rangeMethods()
    {
        // Gaussian bulk plus rare large outliers: min-max covers the outliers, the percentile,
        // MSE and entropy clips sit far inside, and the MSE clip has the lowest error at 8 bits.
        std::mt19937 rng(11);
        std::normal_distribution<float> n(0.0f, 1.0f);
        const int c = 1;
        std::vector<float> x(200000);
        for (auto& v : x) v = n(rng);
        for (int i = 0; i < 20; ++i) x[i * 997] = (i % 2 ? 1 : -1) * 60.0f;
        ActivationStats s(c, HessianPrecision::None, 2048, 4);
        s.add(x, x.size(), 0);
        auto ranges = computeActivationRanges(s.histogram(), 4);
        QCOMPARE(int(ranges.size()), 5);
        const auto& minmax = ranges[0];
        QCOMPARE(minmax.method, RangeMethod::MinMax);
        QVERIFY(minmax.clip >= 60.0 && minmax.clip <= 60.0 + s.histogram().binWidth());
        QCOMPARE(minmax.clippedShare, 0.0);
        const auto& p999 = ranges[1];
        QVERIFY2(p999.clip > 3.0 && p999.clip < 3.6, qPrintable(QString::number(p999.clip)));
        const auto& mse = ranges[3];
        for (const auto& r : ranges) QVERIFY(mse.mse <= r.mse + 1e-12);
        QVERIFY(mse.clip < 10.0);
        const auto& kl = ranges[4];
        QVERIFY(kl.clip < minmax.clip / 2);
        QVERIFY(std::fabs(quantizationMse(s.histogram(), mse.clip, 4) - mse.mse) < 1e-15);
    }

    // Issue #5 (found by the GPU statistics tests): top-k 0 read back() of the empty top list.
    void topKZeroKeepsNoTop()
    {
        const int c = 16;
        auto x = heavyTailed(40, c, 3);
        ActivationStats s(c, HessianPrecision::None, 64, 0);
        s.add(std::span(x).first(20 * c), 20, 0);
        s.add(std::span(x).subspan(20 * c), 20, 1);
        QVERIFY(s.top().empty());
        QCOMPARE(s.histogram().total(), std::uint64_t(40 * c));
        QCOMPARE(s.tokenCount(), std::int64_t(40));
    }

    // Found by test_cuda_stats "zeros first 64ch": zeros added while the range was still 0 went
    // to bin 0 (the bin index was NaN, clamped), i.e. were counted as -range, and moved by the
    // doublings that followed, so the histogram depended on how the rows were split into add()
    // calls. They belong in the middle bin, which zero keeps at every range.
    void zerosBeforeTheRangeIsSet_data()
    {
        QTest::addColumn<int>("bins");
        QTest::newRow("2048 bins") << 2048;
        QTest::newRow("1000 bins") << 1000;
    }
    void zerosBeforeTheRangeIsSet()
    {
        QFETCH(int, bins);
        const int c = 16;
        const std::int64_t t = 64, sequences = 8;
        // Sequences 0-3 zeros (one a negative zero), then heavy-tailed ones whose maxima grow.
        std::vector<float> x(sequences * t * c, 0.0f);
        x[5] = -0.0f;
        const std::vector<float> tail = heavyTailed(4 * t, c, 11);
        for (std::int64_t i = 0; i < 4 * t * c; ++i)
            x[4 * t * c + i] = tail[i] * float(1 << (i / (t * c)));
        ActivationStats perSequence(c, HessianPrecision::None, bins, 0),
            oneAdd(c, HessianPrecision::None, bins, 0), merged(c, HessianPrecision::None, bins, 0),
            zeros(c, HessianPrecision::None, bins, 0);
        for (std::int64_t q = 0; q < sequences; ++q)
            perSequence.add(std::span(x).subspan(q * t * c, t * c), t, std::int32_t(q));
        oneAdd.add(x, sequences * t, 0);
        zeros.add(std::span(x).first(4 * t * c), 4 * t, 0);
        QCOMPARE(zeros.histogram().range, 0.0);
        const std::size_t middle = zeros.histogram().counts.size() / 2;
        QCOMPARE(zeros.histogram().counts[middle], std::uint64_t(4 * t * c));
        QCOMPARE(zeros.histogram().total(), std::uint64_t(4 * t * c));
        merged.add(std::span(x).subspan(4 * t * c), 4 * t, 4);
        QVERIFY(merged.merge(zeros).ok());  // a histogram at range 0 keeps its zeros
        for (const ActivationStats* s : {&perSequence, &oneAdd, &merged}) {
            QCOMPARE(s->histogram().total(), std::uint64_t(sequences * t * c));
            QVERIFY(s->histogram().counts[middle] >= std::uint64_t(4 * t * c));
        }
        QCOMPARE(perSequence.histogram().range, oneAdd.histogram().range);
        QCOMPARE(merged.histogram().range, oneAdd.histogram().range);
        QCOMPARE(merged.histogram().counts, oneAdd.histogram().counts);
        // Binning the nonzero sequences at intermediate ranges nests exactly with 2048 bins.
        if (bins == 2048) QCOMPARE(perSequence.histogram().counts, oneAdd.histogram().counts);
        // Min-max reads the largest value, not the zeros.
        const auto ranges = computeActivationRanges(oneAdd.histogram(), 8);
        QVERIFY(ranges[0].clip < oneAdd.histogram().range);
    }
};

QTEST_APPLESS_MAIN(TestActivationStats)
#include "test_activation_stats.moc"
